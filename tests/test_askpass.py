"""Prompting without a terminal, through fake askpass programs in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keyagentd import askpass
from keyagentd.askpass import Askpass, ask_passphrase, confirm, find_askpass

# A fake askpass: records its argv and SSH_ASKPASS_PROMPT, then answers as told by files.
FAKE = """#!/bin/sh
PATH=/usr/bin:/bin
dir=$(dirname "$0")
name=$(basename "$0")
{ printf '%s\\n' "$@"; printf 'PROMPT_ENV=%s\\n' "${SSH_ASKPASS_PROMPT-unset}"; } \\
    > "$dir/$name.args"
echo $$ > "$dir/$name.pid"
if [ -f "$dir/sleep" ]; then sleep 30; fi
if [ -f "$dir/answer" ]; then cat "$dir/answer"; fi
exit "$(cat "$dir/exit" 2>/dev/null || echo 0)"
"""


def make_fake(directory: Path, name: str = "askpass") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text(FAKE)
    program.chmod(0o755)
    return program


def env_with(path: Path, **extra: str) -> dict[str, str]:
    # No display, no SSH_ASKPASS from the host: only what the test puts there.
    base = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    base = {k: v for k, v in base.items() if "ASKPASS" not in k}
    return {**base, "PATH": str(path), **extra}


# A password agent as far as the protocol goes: an inotify watch on the question directory.
WATCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
assert fd >= 0 and libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x88) >= 0
print("watching", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def ask_dir(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A question directory, and a function that starts a password agent watching it."""
    directory = tmp_path / "ask-password"
    directory.mkdir()
    procs: list[subprocess.Popen[str]] = []

    def start_agent() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "watching\n"

    yield directory, start_agent
    for proc in procs:
        proc.communicate("")


def test_systemd_ask_password_only_with_a_password_agent(
    tmp_path: Path, ask_dir: tuple[Path, Callable[[], None]]
) -> None:
    directory, start_agent = ask_dir
    bindir = tmp_path / "bin"
    make_fake(bindir, "systemd-ask-password")
    env = env_with(bindir)
    # Nobody answers: no program at all, at once (not two minutes of a silent dialog).
    assert not askpass.password_agent_running(str(directory))
    assert find_askpass(None, env, ask_dir=str(directory)) is None
    assert ask_passphrase("P", env=env, ask_dir=str(directory)) is None
    assert not (bindir / "systemd-ask-password.args").exists()
    assert not askpass.password_agent_running(str(tmp_path / "missing"))
    other = tmp_path / "other"
    other.mkdir()
    start_agent()
    assert askpass.password_agent_running(str(directory))
    assert not askpass.password_agent_running(str(other))  # a watch elsewhere does not count
    found = find_askpass(None, env, ask_dir=str(directory))
    assert found == Askpass("systemd", str(bindir / "systemd-ask-password"), "systemd-ask-password")


def live_members_of_group(pgid: int) -> list[int]:
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry.name))
    return live


def args_of(program: Path) -> list[str]:
    return Path(f"{program}.args").read_text().splitlines()


def test_passphrase_from_keyagent_askpass(tmp_path: Path) -> None:
    fake = make_fake(tmp_path / "bin")
    (fake.parent / "answer").write_text("correct horse \n")
    env = env_with(tmp_path / "empty", KEYAGENT_ASKPASS=str(fake))
    assert ask_passphrase("Unlock 'work'?", env=env) == "correct horse "
    assert args_of(fake) == ["Unlock 'work'?", "PROMPT_ENV=unset"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(b"pw\n", "pw"), (b"pw\r\n", "pw"), (b"pw", "pw"), (b"pw\n\n", "pw\n"), (b"\n", "")],
)
def test_exactly_one_line_ending_is_stripped(tmp_path: Path, answer: bytes, expected: str) -> None:
    fake = make_fake(tmp_path)
    (tmp_path / "answer").write_bytes(answer)
    assert ask_passphrase("p", env=env_with(tmp_path, KEYAGENT_ASKPASS=str(fake))) == expected


def test_cancel_bad_output_and_missing_program_give_none(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    env = env_with(tmp_path / "nothing", KEYAGENT_ASKPASS=str(fake))
    (tmp_path / "answer").write_text("typed anyway\n")
    (tmp_path / "exit").write_text("1")
    assert ask_passphrase("p", env=env) is None  # cancelled
    (tmp_path / "exit").write_text("0")
    (tmp_path / "answer").write_bytes(b"\xff\xfe\n")
    assert ask_passphrase("p", env=env) is None  # not UTF-8
    (tmp_path / "answer").write_bytes(b"x" * (askpass.MAX_OUTPUT + 10))
    assert ask_passphrase("p", env=env) is None  # not a line of text
    assert ask_passphrase("p", env=env_with(tmp_path / "nothing")) is None
    assert find_askpass(env=env_with(tmp_path / "nothing")) is None


def test_timeout_kills_the_dialog(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    (tmp_path / "sleep").touch()
    env = env_with(tmp_path / "x", KEYAGENT_ASKPASS=str(fake))
    assert ask_passphrase("p", env=env, timeout=1.5) is None
    pid = int((tmp_path / "askpass.pid").read_text())
    # The shell and its `sleep` share the dialog's process group, which was killed (a killed
    # child may take a moment to die, then linger as a zombie until its new parent reaps it).
    deadline = time.monotonic() + 10  # hang protection only
    while live_members_of_group(pid):
        assert time.monotonic() < deadline, "the dialog's process group survived its timeout"
        time.sleep(0.02)
    assert confirm("q", env=env, timeout=0.3) is False


def test_confirm_uses_ssh_askpass_convention(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    env = env_with(tmp_path / "x", SSH_ASKPASS=str(fake), SSH_ASKPASS_PROMPT="stale")
    assert confirm("Allow firefox to decrypt with 'work'?", env=env) is True
    assert args_of(fake) == ["Allow firefox to decrypt with 'work'?", "PROMPT_ENV=confirm"]
    (tmp_path / "exit").write_text("1")
    assert confirm("q", env=env) is False
    # A passphrase request never inherits the confirm marker.
    (tmp_path / "exit").write_text("0")
    (tmp_path / "answer").write_text("pw\n")
    assert ask_passphrase("p", env=env) == "pw"
    assert args_of(fake)[-1] == "PROMPT_ENV=unset"


def test_documented_order(tmp_path: Path, ask_dir: tuple[Path, Callable[[], None]]) -> None:
    directory, start_agent = ask_dir
    start_agent()
    first = make_fake(tmp_path / "a", "first")
    second = make_fake(tmp_path / "b", "second")
    third = make_fake(tmp_path / "c", "third")
    bindir = tmp_path / "bin"
    for tool in ("zenity", "kdialog", "systemd-ask-password"):
        make_fake(bindir, tool)
    env = env_with(bindir, KEYAGENT_ASKPASS=str(first), SSH_ASKPASS=str(third), DISPLAY=":0")
    assert find_askpass(str(second), env) == Askpass("askpass", str(first), "$KEYAGENT_ASKPASS")
    del env["KEYAGENT_ASKPASS"]
    assert find_askpass(str(second), env) == Askpass("askpass", str(second), "config askpass")
    assert find_askpass(None, env) == Askpass("askpass", str(third), "$SSH_ASKPASS")
    del env["SSH_ASKPASS"]
    assert find_askpass(None, env) == Askpass("zenity", str(bindir / "zenity"), "zenity")
    (bindir / "zenity").unlink()
    assert find_askpass(None, env) == Askpass("kdialog", str(bindir / "kdialog"), "kdialog")
    del env["DISPLAY"]  # no display: graphical dialogs are not candidates
    found = find_askpass(None, env, ask_dir=str(directory))
    assert found == Askpass("systemd", str(bindir / "systemd-ask-password"), "systemd-ask-password")
    # systemd-ask-password cannot ask yes/no: a confirmation has nobody to ask, and fails closed.
    assert find_askpass(None, env, for_confirm=True) is None
    assert confirm("q", env=env) is False
    # A configured program that does not exist is skipped, not fatal.
    assert find_askpass("/nonexistent/askpass", env, ask_dir=str(directory)) == found
    assert find_askpass("askpass-by-name", env_with(tmp_path / "a")) is None
    assert find_askpass("first", env_with(tmp_path / "a")) == Askpass(
        "askpass", str(first), "config askpass"
    )


def test_graphical_and_systemd_argv(
    tmp_path: Path, ask_dir: tuple[Path, Callable[[], None]]
) -> None:
    directory, start_agent = ask_dir
    start_agent()
    bindir = tmp_path / "bin"
    for tool in ("zenity", "kdialog", "systemd-ask-password"):
        make_fake(bindir, tool)
    (bindir / "answer").write_text("pw\n")
    env = env_with(bindir, WAYLAND_DISPLAY="wayland-0")
    assert ask_passphrase("Unlock <b>work</b>", env=env, timeout=30) == "pw"
    assert args_of(bindir / "zenity")[:5] == [
        "--entry",
        "--hide-text",
        "--title=keyagent",
        "--text=Unlock <b>work</b>",
        "--timeout=30",
    ]
    assert confirm("Allow <b>x</b>?", env=env) is True
    assert args_of(bindir / "zenity")[:3] == [
        "--question",
        "--title=keyagent",
        "--text=Allow &lt;b&gt;x&lt;/b&gt;?",
    ]
    (bindir / "zenity").unlink()
    assert ask_passphrase("P", env=env) == "pw"
    assert args_of(bindir / "kdialog")[:4] == ["--title", "keyagent", "--password", "P"]
    assert confirm("Q", env=env) is True
    assert args_of(bindir / "kdialog")[:4] == ["--title", "keyagent", "--yesno", "Q"]
    del env["WAYLAND_DISPLAY"]
    assert ask_passphrase("P", env=env, timeout=5, key_name="work", ask_dir=str(directory)) == "pw"
    assert args_of(bindir / "systemd-ask-password")[:4] == [
        "--timeout=5",
        "--icon=dialog-password",
        "--id=keyagent:work",
        "P",
    ]


def test_dialogs_are_shown_one_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "log"
    program = tmp_path / "slow"
    program.write_text(f"#!/bin/sh\necho start >> {log}\nsleep 0.2\necho end >> {log}\necho pw\n")
    program.chmod(0o755)
    env = env_with(tmp_path / "x", KEYAGENT_ASKPASS=str(program))
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(ask_passphrase("p", env=env)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["pw"] * 3
    assert log.read_text().split() == ["start", "end"] * 3  # never two dialogs at once


def test_prompts_name_the_key_and_the_requesting_program() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while "sleep (pid" not in askpass.unlock_prompt("work", child.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        text = askpass.unlock_prompt("work", child.pid)
        assert "'work'" in text and f"sleep (pid {child.pid}, " in text and "/sleep)" in text
        question = askpass.confirm_prompt("work", "decrypt", child.pid)
        assert question.startswith(f"keyagent: allow sleep (pid {child.pid}, ")
        assert question.endswith("to decrypt with key 'work'?")
    finally:
        child.kill()
        child.wait()


def test_real_askpass_subprocess_sees_prompt_as_one_argument(tmp_path: Path) -> None:
    # A Python askpass, as users write them: argv[1] is the whole prompt.
    program = tmp_path / "py-askpass"
    program.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    program.chmod(0o755)
    env = env_with(tmp_path / "x", KEYAGENT_ASKPASS=str(program))
    answer = ask_passphrase("two words; $(not run)", env=env)
    assert answer is not None and json.loads(answer) == ["two words; $(not run)"]
