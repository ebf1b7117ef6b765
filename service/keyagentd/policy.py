"""Per-key policy (``[keys.NAME]`` in config.toml) and access records.

``check()`` runs after the agent knows which key an operation will use and
before any secret is used or any plaintext produced. It enforces, in order:

- ``allowed_executables``: the caller's ``/proc/PID/exe`` must be one of the
  listed paths. A process that cannot be identified is refused.
- ``confirm``: the person at the desktop is asked, through askpass, and must
  say yes; no answer, a timeout or no askpass program is a no.

Both trust the pid the bus daemon reported for the caller and what /proc says
about it: they stop a stray program from using a key, not a determined attacker
running as the same user (see SECURITY.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from keyagent.protocol import AccessDenied, KeyAgentError
from keyagentd import askpass
from keyagentd.config import Config
from keyagentd.hardening import caller_executable, sanitize

#: Operations the agent reports (and asks confirmation for) by these names.
OPERATIONS: Final = ("decrypt", "delete", "export", "unlock", "encrypt", "lock")

ConfirmFn = Callable[..., bool]


def is_restricted(key_name: str, config: Config) -> bool:
    """True when ``check()`` has work to do for this key (else skip the executor hop)."""
    policy = config.policy_for(key_name)
    return policy.allowed_executables is not None or policy.confirm


def may_prompt(config: Config) -> bool:
    """True when some key has ``confirm``: ``check()`` may then wait for a person, so the
    agent must not run it on the event loop (small decryptions it would run inline)."""
    return any([policy.confirm for policy in config.keys.values()])  # per call: no generator


def check(
    key_name: str,
    caller_pid: int,
    config: Config,
    *,
    operation: str = "decrypt",
    env: Mapping[str, str] | None = None,
    confirm: ConfirmFn = askpass.confirm,
    via: str = "",
) -> None:
    """Raise ``AccessDenied`` unless the caller may use ``key_name`` now.

    May block on a confirmation dialog: from the event loop, run it in a thread. ``via``
    names a program acting for the caller (age-plugin-keyagent) in the question.
    """
    policy = config.policy_for(key_name)
    if policy.allowed_executables is not None:
        exe = caller_executable(caller_pid)
        if exe is None:
            raise AccessDenied(
                f"Key '{key_name}' may only be used by the programs listed in its policy, "
                f"and the calling process ({caller_pid}) cannot be identified."
            )
        if exe not in policy.allowed_executables:
            raise AccessDenied(
                f"Key '{key_name}' may not be used by {sanitize(exe, 200)}: "
                "it is not in the key's allowed_executables."
            )
    if policy.confirm:
        prompt = askpass.confirm_prompt(key_name, operation, caller_pid, via)
        env = os.environ if env is None else env
        if not confirm(prompt, config_askpass=config.askpass, env=env):
            raise AccessDenied(f"Using key '{key_name}' to {operation} was not confirmed.")


@dataclass(frozen=True)
class AccessRecord:
    """One use of a key, for the log and the proposed ``AccessLog(ssuss)`` signal."""

    operation: str
    key: str
    pid: int
    executable: str
    result: str

    #: D-Bus signature of ``body()``.
    SIGNATURE: ClassVar[str] = "ssuss"

    def body(self) -> list[object]:
        return [self.operation, self.key, self.pid, self.executable, self.result]

    def log_line(self) -> str:
        exe = self.executable or "?"
        return (
            f"{self.operation} key={self.key or '-'} pid={self.pid} exe={exe} result={self.result}"
        )


def result_of(error: BaseException | None) -> str:
    """``ok``, a named error's short name (``Locked``, ``AccessDenied``...), or ``Failed``."""
    if error is None:
        return "ok"
    if isinstance(error, KeyAgentError):
        return error.short_name
    return "Failed"


def access_record(
    operation: str,
    key: str,
    pid: int,
    result: str | BaseException | None = "ok",
    executable: str | None = None,
) -> AccessRecord:
    """Build a record; the executable is looked up from ``pid`` unless given."""
    outcome = result if isinstance(result, str) else result_of(result)
    if executable is None:
        executable = caller_executable(pid) or ""
    return AccessRecord(
        operation, key, min(max(0, pid), 2**32 - 1), sanitize(executable, 200), outcome
    )
