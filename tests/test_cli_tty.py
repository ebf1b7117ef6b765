"""Prompting through a real pseudo-terminal: the command's /dev/tty is a pty this test types into,
while stdin and stdout stay pipes or files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import termios
import threading
from pathlib import Path

import pyrage

from cli_support import FAST_AGENT_ARGS, PASSPHRASE, TtyRun, create_key, ka, ka_pw
from cli_support import files as files
from cli_support import private_bus as private_bus
from conftest import BusFactory, PrivateBus


def test_init_prompts_twice_without_echo(private_bus: PrivateBus) -> None:
    run = TtyRun.start(private_bus, "init", "work")
    run.answer("New passphrase for key 'work': ", "typed secret")
    run.answer("Confirm passphrase for key 'work': ", "typed secret")
    code, out, err = run.finish()
    assert code == 0, err
    assert out.decode().startswith("age1")
    assert b"typed secret" not in run.seen  # echo was off
    assert ka_pw(private_bus, ["typed secret"], "unlock", "work").returncode == 0


def test_init_mismatch_and_empty(private_bus: PrivateBus) -> None:
    # Like ssh-keygen: a mismatch (or an empty entry) asks again, three times in all.
    run = TtyRun.start(private_bus, "init", "k")
    run.answer("New passphrase for key 'k': ", "one")
    run.answer("Confirm passphrase for key 'k': ", "two")
    run.answer("The passphrases do not match, try again. New passphrase for key 'k': ", "")
    run.answer("The passphrase must not be empty, try again. New passphrase for key 'k': ", "3")
    run.answer("Confirm passphrase for key 'k': ", "4")
    code, _, err = run.finish()
    assert code == 1 and b"keyagent: error: The passphrases do not match." in err
    assert b"New passphrase" not in run.seen  # no fourth prompt
    assert ka(private_bus, "list").stdout == b""
    run = TtyRun.start(private_bus, "init", "k")
    run.answer("New passphrase for key 'k': ", "one")
    run.answer("Confirm passphrase for key 'k': ", "two")
    run.answer("The passphrases do not match, try again. New passphrase for key 'k': ", "good")
    run.answer("Confirm passphrase for key 'k': ", "good")
    code, out, err = run.finish()
    assert code == 0 and out.startswith(b"age1"), err
    assert ka_pw(private_bus, ["good"], "unlock", "k").returncode == 0


def test_unlock_retries_on_the_terminal(private_bus: PrivateBus) -> None:
    create_key(private_bus, "k")
    run = TtyRun.start(private_bus, "unlock", "k", "--idle-timeout", "90")
    run.answer("Passphrase for key 'k': ", "wrong")
    run.answer("Wrong passphrase, try again. Passphrase for key 'k': ", PASSPHRASE)
    code, _, err = run.finish()
    assert code == 0, err
    key = json.loads(ka(private_bus, "status", "--json").stdout)["keys"][0]
    assert key["locked"] is False and key["idle_timeout"] == 90


def test_decrypt_prompts_for_the_locked_key(private_bus: PrivateBus, files: Path) -> None:
    create_key(private_bus, "k")
    enc = files / "f.age"
    assert (
        ka(private_bus, "encrypt", "-k", "k", "-o", str(enc), input=b"top secret").returncode == 0
    )
    out = files / "out"
    run = TtyRun.start(private_bus, "decrypt", "-o", str(out), str(enc))
    run.answer("Key 'k' is locked. Passphrase for 'k': ", PASSPHRASE)
    code, _, err = run.finish()
    assert code == 0, err
    assert out.read_bytes() == b"top secret"
    assert sorted(os.listdir(files)) == ["f.age", "out"]


def test_decrypt_prompts_for_a_file_passphrase(bus_factory: BusFactory, files: Path) -> None:
    bus = bus_factory(agent_args=FAST_AGENT_ARGS)
    enc = files / "p.age"
    r = ka_pw(bus, ["file pw"], "encrypt", "-p", "-o", str(enc), input=b"by passphrase")
    assert r.returncode == 0, r.stderr
    run = TtyRun.start(bus, "decrypt", str(enc))
    run.answer("Enter passphrase: ", "nope")
    run.answer("Wrong passphrase, try again: ", "file pw")
    code, out, err = run.finish()
    assert code == 0, err
    assert out == b"by passphrase"


def test_encrypt_with_passphrase_on_the_terminal(private_bus: PrivateBus) -> None:
    run = TtyRun.start(private_bus, "encrypt", "-p", "-a", stdin=subprocess.PIPE)
    assert run.proc.stdin is not None
    run.proc.stdin.write(b"typed data")
    run.proc.stdin.close()
    run.answer("Enter passphrase: ", "pw1")
    run.answer("Confirm passphrase: ", "pw1")
    code, out, err = run.finish()
    assert code == 0, err
    assert out.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert pyrage.passphrase.decrypt(out, "pw1") == b"typed data"


def test_delete_asks_for_confirmation(private_bus: PrivateBus) -> None:
    create_key(private_bus, "k")
    run = TtyRun.start(private_bus, "delete", "k")
    run.answer("Delete key 'k' for good? This cannot be undone. [y/N] ", "n")
    code, _, err = run.finish()
    assert code == 1 and b"was not deleted" in err
    run = TtyRun.start(private_bus, "delete", "k")
    run.answer("[y/N] ", "y")
    run.answer("Passphrase for key 'k' (to delete it): ", PASSPHRASE)
    code, _, err = run.finish()
    assert code == 0, err
    assert ka(private_bus, "list").stdout == b""


def test_passwd_and_export_on_the_terminal(private_bus: PrivateBus, files: Path) -> None:
    create_key(private_bus, "k")
    run = TtyRun.start(private_bus, "passwd", "k")
    run.answer("Current passphrase for key 'k': ", PASSPHRASE)
    run.answer("New passphrase for key 'k': ", "second")
    run.answer("Confirm new passphrase: ", "second")
    code, _, err = run.finish()
    assert code == 0, err
    run = TtyRun.start(private_bus, "export", "k", "-o", str(files / "k.age"))
    run.answer("Passphrase for key 'k': ", "second")
    code, _, err = run.finish()
    assert code == 0, err
    identity = pyrage.passphrase.decrypt((files / "k.age").read_bytes(), "second").decode()
    assert identity.strip().startswith("AGE-SECRET-KEY-1")


def test_progress_bar_on_a_terminal(private_bus: PrivateBus, files: Path) -> None:
    """Input of unknown size with stderr on a terminal: the progress line appears.

    The input pipe stays open until the terminal shows progress, so the call is necessarily
    still running when the command polls; nothing here depends on speed.
    """
    create_key(private_bus, "k")
    r, w = os.pipe()
    run = TtyRun.start(
        private_bus, "encrypt", "-k", "k", "-o", str(files / "big.age"), stdin=r, stderr_tty=True
    )
    os.close(r)
    blob = os.urandom(2**20)

    def feed() -> None:
        with open(w, "wb") as f:
            f.write(blob)
            f.flush()
            run.expect("B/s")  # the progress line: bytes so far and the rate
            f.write(blob)

    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join(timeout=60)
    code, _, _ = run.finish()
    assert code == 0
    assert b"B/s" in run.seen
    assert run.seen.endswith(b"\r\x1b[K")  # the line is cleared at the end
    assert ka_pw(private_bus, [PASSPHRASE], "unlock", "k").returncode == 0
    dec = ka(private_bus, "decrypt", str(files / "big.age"))
    assert dec.stdout == blob + blob


def test_no_progress_in_pipes(private_bus: PrivateBus) -> None:
    create_key(private_bus, "k")
    r = ka(private_bus, "encrypt", "-k", "k", input=os.urandom(17 * 2**20))
    assert r.returncode == 0 and r.stderr == b""


def test_interrupt_at_a_prompt_restores_the_terminal(private_bus: PrivateBus) -> None:
    create_key(private_bus, "k")
    run = TtyRun.start(private_bus, "unlock", "k")
    run.expect("Passphrase for key 'k': ")
    assert not termios.tcgetattr(run.master)[3] & termios.ECHO  # echo off while asking
    run.proc.send_signal(signal.SIGINT)
    echo_after = None
    code = run.proc.wait(timeout=30)
    echo_after = termios.tcgetattr(run.master)[3] & termios.ECHO
    _, _, err = run.finish()
    assert code == 130
    assert b"keyagent: error: Interrupted." in err and b"Traceback" not in err
    assert echo_after  # echo is back on


def test_quiet_suppresses_the_progress_bar(private_bus: PrivateBus, files: Path) -> None:
    create_key(private_bus, "k")
    r, w = os.pipe()
    run = TtyRun.start(
        private_bus,
        "encrypt",
        "-q",
        "-k",
        "k",
        "-o",
        str(files / "q.age"),
        stdin=r,
        stderr_tty=True,
    )
    os.close(r)
    with open(w, "wb") as f:
        f.write(os.urandom(2**20))
        f.flush()
        for _ in range(10):  # the bar would be redrawn every 0.2 s meanwhile
            run.read_some(0.1)
    code, _, _ = run.finish()
    assert code == 0
    assert b"B/s" not in run.seen and b"\x1b[K" not in run.seen


def test_decrypt_from_a_pipe_prompts_and_replays(private_bus: PrivateBus) -> None:
    create_key(private_bus, "k")
    data = os.urandom(500_000)
    enc = ka(private_bus, "encrypt", "-k", "k", input=data).stdout
    run = TtyRun.start(private_bus, "decrypt", stdin=subprocess.PIPE)
    stdin = run.proc.stdin
    assert stdin is not None
    feeder = threading.Thread(target=lambda: (stdin.write(enc), stdin.close()))
    feeder.start()
    run.answer("Key 'k' is locked. Passphrase for 'k': ", PASSPHRASE)
    code, out, err = run.finish()
    feeder.join()
    assert code == 0, err
    assert out == data
