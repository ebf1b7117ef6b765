"""Asking the person at the desktop, without a terminal: passphrases and yes/no confirmations.

The first program found, in this order, is used:

1. ``$KEYAGENT_ASKPASS``
2. ``askpass`` from the configuration file
3. ``$SSH_ASKPASS``
4. ``zenity``, then ``kdialog``, when a display is set (``$WAYLAND_DISPLAY`` or ``$DISPLAY``)
5. ``systemd-ask-password`` (passphrases only: it has no yes/no question), and only while a
   password agent is running (`password_agent_running`)

Programs 1-3 follow the ssh-askpass convention: the prompt is the only
argument, the passphrase comes on stdout, a non-zero exit means cancelled; with
``SSH_ASKPASS_PROMPT=confirm`` they ask a question and exit 0 for yes.
systemd-ask-password comes last, and only when some process answers its questions: without a
password agent it would wait out its whole timeout in silence. Without any program the caller
fails at once and says how to set one.

Every call blocks until the person answers or the timeout passes: the agent
runs them in a worker thread. One dialog at a time: concurrent requests queue.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from keyagentd.hardening import describe_caller

Kind = Literal["askpass", "zenity", "kdialog", "systemd"]

DEFAULT_TIMEOUT: Final = 120.0
#: A passphrase is a line of text; more output than this is not an answer.
MAX_OUTPUT: Final = 64 * 1024

#: Where systemd-ask-password (systemd 252 and the system manager of later ones) leaves its
#: questions, and where password agents (plymouth, the tty agent, graphical ones) watch.
ASK_PASSWORD_DIR: Final = "/run/systemd/ask-password"

_dialog_lock = threading.Lock()


@dataclass(frozen=True)
class Askpass:
    """A prompting program: how to call it (``kind``), where it is, and who chose it."""

    kind: Kind
    program: str
    source: str


def find_askpass(
    config_askpass: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    for_confirm: bool = False,
    ask_dir: str = ASK_PASSWORD_DIR,
) -> Askpass | None:
    """The program to use, in the documented order; None when there is none.

    systemd-ask-password counts only while a password agent watches ``ask_dir``."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    candidates: list[tuple[Kind, str | None, str]] = [
        ("askpass", env.get("KEYAGENT_ASKPASS"), "$KEYAGENT_ASKPASS"),
        ("askpass", config_askpass, "config askpass"),
        ("askpass", env.get("SSH_ASKPASS"), "$SSH_ASKPASS"),
    ]
    if env.get("WAYLAND_DISPLAY") or env.get("DISPLAY"):
        candidates += [("zenity", "zenity", "zenity"), ("kdialog", "kdialog", "kdialog")]
    if not for_confirm:
        candidates.append(("systemd", "systemd-ask-password", "systemd-ask-password"))
    for kind, program, source in candidates:
        if not program:
            continue
        found = _resolve(program, path)
        if found is not None and (kind != "systemd" or password_agent_running(ask_dir)):
            return Askpass(kind, found, source)
    return None


def password_agent_running(ask_dir: str = ASK_PASSWORD_DIR, proc: str = "/proc") -> bool:
    """Whether a process holds an inotify watch on ``ask_dir``: that is how every password
    agent waits for systemd-ask-password's questions (its documented protocol). PID 1 does
    not count: its path units only start the console and wall agents, which answer nobody at
    a desktop. Processes of other users are not readable, so they cannot count either."""
    try:
        st = os.stat(ask_dir)
    except OSError:
        return False
    # fdinfo shows the kernel's device number (major << 20 | minor) and the inode, in hex.
    want = (f"{st.st_ino:x}", f"{os.major(st.st_dev) << 20 | os.minor(st.st_dev):x}")
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit() and p != "1"]
    except OSError:
        return False
    return any(_watches(f"{proc}/{pid}", want) for pid in pids)


def _watches(pdir: str, want: tuple[str, str]) -> bool:
    try:
        fds = os.listdir(f"{pdir}/fd")
    except OSError:
        return False  # gone, or not ours
    for fd in fds:
        try:
            if os.readlink(f"{pdir}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"{pdir}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
                info = f.read()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify "):
                fields = dict(item.partition(":")[::2] for item in line.split()[1:])
                if (fields.get("ino"), fields.get("sdev")) == want:
                    return True
    return False


def _resolve(program: str, path: str) -> str | None:
    if "/" in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    import shutil  # here: shutil (bz2, lzma) costs the agent's cold start ~5 ms

    return shutil.which(program, path=path)


def ask_passphrase(
    prompt: str,
    *,
    config_askpass: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    key_name: str = "",
    ask_dir: str = ASK_PASSWORD_DIR,
) -> str | None:
    """The passphrase typed, or None if cancelled, timed out, or no program is available."""
    env = os.environ if env is None else env
    found = find_askpass(config_askpass, env, ask_dir=ask_dir)
    if found is None:
        return None
    argv = _passphrase_argv(found, prompt, timeout, key_name)
    child_env = {k: v for k, v in env.items() if k != "SSH_ASKPASS_PROMPT"}
    code, out = _run(argv, child_env, timeout)
    if code != 0 or out is None:
        return None
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Exactly one line ending is the protocol's; anything else is part of the passphrase.
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def confirm(
    prompt: str,
    *,
    config_askpass: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """True only if the person said yes; no program, a timeout or any failure is no."""
    env = os.environ if env is None else env
    found = find_askpass(config_askpass, env, for_confirm=True)
    if found is None:
        return False
    child_env = dict(env)
    if found.kind == "askpass":
        child_env["SSH_ASKPASS_PROMPT"] = "confirm"
    code, _out = _run(_confirm_argv(found, prompt, timeout), child_env, timeout)
    return code == 0


def unlock_prompt(key_name: str, caller_pid: int) -> str:
    caller = describe_caller(caller_pid)
    return f"keyagent: passphrase to unlock key '{key_name}', requested by {caller}"


def confirm_prompt(key_name: str, operation: str, caller_pid: int, via: str = "") -> str:
    """``via``: the program acting for the caller (age-plugin-keyagent), named after it."""
    caller = describe_caller(caller_pid) + (f" via {via}" if via else "")
    return f"keyagent: allow {caller} to {operation} with key '{key_name}'?"


def _passphrase_argv(found: Askpass, prompt: str, timeout: float, key_name: str) -> list[str]:
    seconds = str(max(1, int(timeout)))
    if found.kind == "zenity":
        return [found.program, "--entry", "--hide-text", "--title=keyagent",
                f"--text={prompt}", f"--timeout={seconds}"]  # fmt: skip
    if found.kind == "kdialog":
        return [found.program, "--title", "keyagent", "--password", prompt]
    if found.kind == "systemd":
        ident = f"--id=keyagent:{key_name}" if key_name else "--id=keyagent"
        return [found.program, f"--timeout={seconds}", "--icon=dialog-password", ident, prompt]
    return [found.program, prompt]


def _confirm_argv(found: Askpass, prompt: str, timeout: float) -> list[str]:
    if found.kind == "zenity":
        import html  # here: html.entities is a large table, not needed to start

        # Message dialogs render Pango markup: a caller's name must not restyle the question.
        return [found.program, "--question", "--title=keyagent",
                f"--text={html.escape(prompt)}", f"--timeout={max(1, int(timeout))}"]  # fmt: skip
    if found.kind == "kdialog":
        return [found.program, "--title", "keyagent", "--yesno", prompt]
    return [found.program, prompt]


def _run(argv: list[str], env: Mapping[str, str], timeout: float) -> tuple[int, bytes | None]:
    """(exit code, stdout) of one dialog; (-1, None) on timeout or failure to start."""
    with _dialog_lock:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,  # its own group: a timeout kills helpers it started too
                close_fds=True,
            )
        except OSError:
            return -1, None
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()  # not read to EOF: a helper that left the group may hold it
            return -1, None
        if len(out) > MAX_OUTPUT:
            return -1, None
        return proc.returncode, out
