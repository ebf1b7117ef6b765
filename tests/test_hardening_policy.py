"""Per-key policy: allowed executables, confirmation through askpass, and access records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest

from keyagent.protocol import AccessDenied, Locked
from keyagentd.config import Config, KeyPolicy
from keyagentd.policy import (
    AccessRecord,
    access_record,
    check,
    is_restricted,
    may_prompt,
    result_of,
)

ME = os.path.realpath(sys.executable)


def config_with(**policies: KeyPolicy) -> Config:
    return Config(keys=MappingProxyType(policies))


def never_asked(*_args: object, **_kw: object) -> bool:
    raise AssertionError("confirmation must not be asked")


def test_default_policy_allows_anyone() -> None:
    config = Config()
    assert not is_restricted("work", config)
    assert not may_prompt(config)
    check("work", os.getpid(), config, confirm=never_asked)
    check("work", 0, config, confirm=never_asked)  # not even a pid is needed


def test_allowed_executables() -> None:
    config = config_with(work=KeyPolicy(allowed_executables=(ME, "/usr/bin/other")))
    assert is_restricted("work", config) and not is_restricted("home", config)
    assert not may_prompt(config)  # an executable check never waits for a person
    check("work", os.getpid(), config, confirm=never_asked)
    child = subprocess.Popen(["sleep", "30"])
    try:
        # Wait for the exec: until then the child is still this interpreter.
        while os.readlink(f"/proc/{child.pid}/exe") == ME:
            pass
        with pytest.raises(AccessDenied) as info:
            check("work", child.pid, config, confirm=never_asked)
        message = str(info.value)
        assert "Key 'work' may not be used by /usr/bin/sleep" in message
        assert "allowed_executables" in message
        check("home", child.pid, config, confirm=never_asked)  # other keys: no policy
    finally:
        child.kill()
        child.wait()
    # A caller that cannot be identified (gone, or pid unknown) is refused.
    with pytest.raises(AccessDenied, match="cannot be identified"):
        check("work", child.pid, config, confirm=never_asked)
    with pytest.raises(AccessDenied, match="cannot be identified"):
        check("work", 0, config, confirm=never_asked)


def test_access_denied_goes_out_as_the_bus_access_denied_error() -> None:
    assert AccessDenied.wire_name() == "org.freedesktop.DBus.Error.AccessDenied"


def test_confirm_asks_with_key_operation_and_caller() -> None:
    asked: list[tuple[str, str | None]] = []

    def answer(yes: bool):  # type: ignore[no-untyped-def]
        def confirm(prompt: str, *, config_askpass: str | None, env: object) -> bool:
            asked.append((prompt, config_askpass))
            return yes

        return confirm

    config = Config(
        askpass="/opt/my-askpass", keys=MappingProxyType({"work": KeyPolicy(confirm=True)})
    )
    assert may_prompt(config)
    check("work", os.getpid(), config, operation="decrypt", confirm=answer(True))
    with pytest.raises(AccessDenied, match="Using key 'work' to export was not confirmed"):
        check("work", os.getpid(), config, operation="export", confirm=answer(False))
    assert len(asked) == 2
    prompt, program = asked[0]
    assert program == "/opt/my-askpass"
    assert "'work'" in prompt and "decrypt" in prompt and f"pid {os.getpid()}" in prompt


def test_executable_is_checked_before_anyone_is_asked() -> None:
    config = config_with(work=KeyPolicy(allowed_executables=("/usr/bin/other",), confirm=True))
    with pytest.raises(AccessDenied, match="may not be used by"):
        check("work", os.getpid(), config, confirm=never_asked)


def test_confirm_through_a_real_askpass_program(tmp_path: Path) -> None:
    program = tmp_path / "askpass"
    log = tmp_path / "log"
    program.write_text(f'#!/bin/sh\necho "$SSH_ASKPASS_PROMPT:$1" > {log}\nexit "$ANSWER"\n')
    program.chmod(0o755)
    config = Config(askpass=str(program), keys=MappingProxyType({"k": KeyPolicy(confirm=True)}))
    env = {"PATH": "/usr/bin:/bin", "ANSWER": "0"}
    check("k", os.getpid(), config, env=env)
    assert log.read_text().startswith("confirm:keyagent: allow ")
    with pytest.raises(AccessDenied):
        check("k", os.getpid(), config, env={**env, "ANSWER": "1"})
    # No askpass program at all: nobody can say yes, so the answer is no.
    bare = Config(keys=MappingProxyType({"k": KeyPolicy(confirm=True)}))
    with pytest.raises(AccessDenied):
        check("k", os.getpid(), bare, env={"PATH": str(tmp_path / "empty")})


def test_access_record() -> None:
    record = access_record("decrypt", "work", os.getpid())
    assert record == AccessRecord("decrypt", "work", os.getpid(), ME, "ok")
    assert record.body() == ["decrypt", "work", os.getpid(), ME, "ok"]
    assert AccessRecord.SIGNATURE == "ssuss"
    assert record.log_line() == f"decrypt key=work pid={os.getpid()} exe={ME} result=ok"
    denied = access_record("decrypt", "work", 0, AccessDenied("no"))
    assert (denied.pid, denied.executable, denied.result) == (0, "", "AccessDenied")
    assert access_record("decrypt", "", 5, Locked.for_keys(["a"]), "/x\n").result == "Locked"
    assert access_record("decrypt", "", 5, None, "/x\n").executable == "/x?"
    assert access_record("decrypt", "", -3, ValueError("boom"), "").result == "Failed"
    assert access_record("decrypt", "", -3, "ok", "").pid == 0
    assert result_of(None) == "ok"
    with pytest.raises(AttributeError):
        record.result = "x"  # type: ignore[misc]
