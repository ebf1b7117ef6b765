"""age-plugin-keyagent against Debian's age 1.1.1 on a private bus: `-d -i`, `-d -j`, `-e -i`,
the post-quantum hybrid, locked keys with and without a terminal, policy judging age (not the
plugin's interpreter), and bad input answered with the protocol's `error` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import ka
from conftest import BusFactory, PrivateBus, have
from keyagent.plugin.encoding import encode_identity
from plugin_support import (
    AccessWatcher,
    age,
    age_on_tty,
    identity_file,
    plugin_bus,
    start_plugin_bus,
    unlocked_key,
    write_config,
)

__all__ = ["plugin_bus"]

pytestmark = pytest.mark.skipif(not have("age"), reason="age is installed by scripts/sysdeps.sh")

AGE = os.path.realpath("/usr/bin/age")
PYTHON = os.path.realpath(sys.executable)


def sealed(bus: PrivateBus, recipient: str, data: bytes = b"hello plugin") -> bytes:
    r = age(bus, "-r", recipient, input=data)
    assert r.returncode == 0, r.stderr
    return r.stdout


def error_of(r: subprocess.CompletedProcess[bytes]) -> str:
    """age's one error line (it adds a "report unexpected errors" line of its own)."""
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("age: error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_decrypt_with_identity_file_and_with_j(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    recipient = unlocked_key(plugin_bus, "work")
    unlocked_key(plugin_bus, "other")
    ct = sealed(plugin_bus, recipient)
    ident = identity_file(plugin_bus, "work", tmp_path)
    assert age(plugin_bus, "-d", "-i", str(ident), input=ct).stdout == b"hello plugin"
    assert age(plugin_bus, "-d", "-j", "keyagent", input=ct).stdout == b"hello plugin"
    # The identity names a key: another key's identity does not open the file.
    other = identity_file(plugin_bus, "other", tmp_path)
    assert "no key in the agent opens this file" in error_of(
        age(plugin_bus, "-d", "-i", str(other), input=ct)
    )


def test_identity_file_holds_no_secret(plugin_bus: PrivateBus) -> None:
    recipient = unlocked_key(plugin_bus, "work")
    text = plugin_bus.keyagent("identity", "work").stdout
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert any("work" in ln and "x25519" in ln for ln in comments)
    assert any(recipient in ln for ln in comments)
    assert text.splitlines()[-1] == encode_identity("work")
    assert "AGE-SECRET-KEY" not in text
    missing = plugin_bus.keyagent("identity", "nosuch", check=False)
    assert missing.returncode != 0 and "nosuch" in missing.stderr and missing.stdout == ""


def test_access_log_names_age_via_the_plugin(plugin_bus: PrivateBus) -> None:
    ct = sealed(plugin_bus, unlocked_key(plugin_bus, "work"))
    watcher = AccessWatcher(plugin_bus)
    try:
        proc = subprocess.Popen(
            ["age", "-d", "-j", "keyagent"],
            env=plugin_bus.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, _ = proc.communicate(ct, timeout=60)
        assert out == b"hello plugin"
        op, key, pid, exe, result = watcher.next()
        assert (op, key, exe, result) == (
            "UnwrapFileKey",
            "work",
            f"{AGE} via age-plugin-keyagent",
            "ok",
        )
        assert pid == proc.pid  # age, not the plugin (its child)
    finally:
        watcher.close()


def test_encrypt_to_identity_file(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    unlocked_key(plugin_bus, "work")
    ident = identity_file(plugin_bus, "work", tmp_path)
    r = age(plugin_bus, "-e", "-i", str(ident), input=b"to my agent key")
    assert r.returncode == 0, r.stderr
    assert b"\n-> X25519 " in r.stdout  # the key's native stanza: no plugin needed to open it
    (tmp_path / "f.age").write_bytes(r.stdout)
    assert plugin_bus.keyagent("decrypt", str(tmp_path / "f.age")).stdout == "to my agent key"
    assert age(plugin_bus, "-d", "-i", str(ident), input=r.stdout).stdout == b"to my agent key"


def test_post_quantum_key_through_age_1_1_1(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    """age 1.1.1 knows no post-quantum recipient; through the plugin it writes and reads one."""
    unlocked_key(plugin_bus, "pq", "--type", "mlkem768x25519")
    ident = identity_file(plugin_bus, "pq", tmp_path)
    assert "mlkem768x25519" in ident.read_text()
    r = age(plugin_bus, "-e", "-i", str(ident), input=b"quantum safe")
    assert r.returncode == 0, r.stderr
    assert b"\n-> mlkem768x25519 " in r.stdout
    assert age(plugin_bus, "-d", "-j", "keyagent", input=r.stdout).stdout == b"quantum safe"
    (tmp_path / "pq.age").write_bytes(r.stdout)
    assert plugin_bus.keyagent("decrypt", str(tmp_path / "pq.age")).stdout == "quantum safe"
    # And a file the agent itself made for the hybrid key opens through age 1.1.1.
    mine = tmp_path / "mine.age"
    ka(plugin_bus, "encrypt", "-k", "pq", "-o", str(mine), input=b"from the agent")
    assert age(plugin_bus, "-d", "-i", str(ident), str(mine)).stdout == b"from the agent"


def test_locked_key_without_terminal_names_unlock(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    ct = sealed(plugin_bus, unlocked_key(plugin_bus, "work"))
    ka(plugin_bus, "lock", "work")
    out = tmp_path / "out"
    r = age(plugin_bus, "-d", "-j", "keyagent", "-o", str(out), input=ct)
    line = error_of(r)
    assert "key 'work' is locked" in line and "keyagent unlock work" in line
    assert r.stdout == b"" and not out.exists()


def test_locked_key_without_terminal_uses_askpass(bus_factory: BusFactory, tmp_path: Path) -> None:
    askpass = tmp_path / "askpass"
    log = tmp_path / "asked"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{log}'\necho pw-work\n")
    askpass.chmod(0o755)
    bus = start_plugin_bus(bus_factory, tmp_path / "b", KEYAGENT_ASKPASS=str(askpass))
    ct = sealed(bus, unlocked_key(bus, "work"))
    ka(bus, "lock", "work")
    r = age(bus, "-d", "-j", "keyagent", input=ct)
    assert (r.returncode, r.stdout) == (0, b"hello plugin"), r.stderr
    (prompt,) = log.read_text().splitlines()
    assert "'work'" in prompt and AGE in prompt  # names the program that asked: age


def test_locked_key_on_terminal_unlocks_through_age_prompt(
    plugin_bus: PrivateBus, tmp_path: Path
) -> None:
    ct = tmp_path / "f.age"
    ct.write_bytes(sealed(plugin_bus, unlocked_key(plugin_bus, "work")))
    ka(plugin_bus, "lock", "work")
    run = age_on_tty(plugin_bus, "-d", "-j", "keyagent", str(ct))
    run.answer("Passphrase for keyagent key 'work':", "wrong")
    run.answer("Wrong passphrase. Passphrase for keyagent key 'work':", "pw-work")
    code, out, err = run.finish()
    assert (code, out) == (0, b"hello plugin"), err
    status = plugin_bus.keyagent("status", "--json").stdout
    assert '"locked": false' in status


def test_three_wrong_passphrases_on_terminal(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    ct = tmp_path / "f.age"
    ct.write_bytes(sealed(plugin_bus, unlocked_key(plugin_bus, "work")))
    ka(plugin_bus, "lock", "work")
    run = age_on_tty(plugin_bus, "-d", "-j", "keyagent", "-o", str(tmp_path / "out"), str(ct))
    for _ in range(3):
        run.answer("Passphrase for keyagent key 'work':", "wrong")
    code, out, err = run.finish()
    assert code != 0 and out == b""
    assert b"key 'work' was not unlocked: 3 wrong passphrases" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("allowed", ["age", "python"])
def test_allowed_executables_judge_age(
    plugin_bus: PrivateBus, tmp_path: Path, allowed: str
) -> None:
    exe = AGE if allowed == "age" else PYTHON
    write_config(plugin_bus, f'[keys.work]\nallowed_executables = ["{exe}"]\n')
    ct = sealed(plugin_bus, unlocked_key(plugin_bus, "work"))
    r = age(plugin_bus, "-d", "-j", "keyagent", input=ct)
    (tmp_path / "f.age").write_bytes(ct)
    direct = ka(plugin_bus, "decrypt", str(tmp_path / "f.age"))
    if allowed == "age":
        assert r.stdout == b"hello plugin"
        assert direct.returncode == 4  # the keyagent command (python) is not age
    else:
        # The plugin runs on python too, but it is age that asks.
        assert f"may not be used by {AGE}" in error_of(r)
        assert direct.returncode == 0


def test_file_for_no_key_and_unknown_identity(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    unlocked_key(plugin_bus, "work")
    agent = plugin_bus.agent_pid()
    keygen = plugin_bus.run(["age-keygen"]).stdout
    foreign = next(ln.split()[-1] for ln in keygen.splitlines() if "public key" in ln)
    out = tmp_path / "out"
    r = age(plugin_bus, "-d", "-j", "keyagent", "-o", str(out), input=sealed(plugin_bus, foreign))
    assert "keyagent plugin: no key in the agent opens this file" in error_of(r)
    ghost = tmp_path / "ghost.txt"
    ghost.write_text(encode_identity("ghost") + "\n")
    ct = sealed(plugin_bus, plugin_bus.keyagent("recipient", "work").stdout.strip())
    r = age(plugin_bus, "-d", "-i", str(ghost), "-o", str(out), input=ct)
    assert "there is no key named 'ghost' in the agent" in error_of(r)
    r = age(plugin_bus, "-e", "-i", str(ghost), "-o", str(out), input=b"x")
    assert "there is no key named 'ghost' in the agent" in error_of(r)
    assert not out.exists()
    assert plugin_bus.agent_pid() == agent


def test_any_key_identity_cannot_encrypt(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    unlocked_key(plugin_bus, "work")
    anyk = tmp_path / "any.txt"
    anyk.write_text(encode_identity("") + "\n")
    r = age(plugin_bus, "-e", "-i", str(anyk), input=b"x")
    assert "without a key name only decrypts" in error_of(r)
    assert r.stdout == b""


@pytest.mark.parametrize("answer", [0, 1])
def test_confirm_names_age_via_the_plugin(
    plugin_bus: PrivateBus, tmp_path: Path, answer: int
) -> None:
    program, log = tmp_path / "confirm", tmp_path / "asked"
    program.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{log}'\nexit {answer}\n")
    program.chmod(0o755)
    write_config(plugin_bus, f'askpass = "{program}"\n[keys.work]\nconfirm = true\n')
    ct = sealed(plugin_bus, unlocked_key(plugin_bus, "work"))
    r = age(plugin_bus, "-d", "-j", "keyagent", input=ct)
    (question,) = log.read_text().splitlines()
    assert f", {AGE}) via age-plugin-keyagent to decrypt with key 'work'?" in question
    if answer == 0:
        assert r.stdout == b"hello plugin"
    else:
        assert "was not confirmed" in error_of(r) and r.stdout == b""
