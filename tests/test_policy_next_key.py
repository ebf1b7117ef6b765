"""Per-key policy picks the next key (issue 13): a file for a restricted key and an
unrestricted one opens for a program that may use only the unrestricted key, in streams
(DecryptFd, the `keyagent` command) and in messages (Decrypt), without asking anyone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import PrivateBus
from test_desktop_agent import decrypt_in_message, init_and_unlock, write_config


def _sealed(tmp_path: Path, *recipients: str) -> Path:
    plain, out = tmp_path / "plain.txt", tmp_path / "f.age"
    plain.write_text("hello\n")
    args = [a for r in recipients for a in ("-r", r)]
    subprocess.run(["age", *args, "-o", str(out), str(plain)], check=True)
    return out


def test_a_refused_key_is_passed_over(private_bus: PrivateBus, tmp_path: Path) -> None:
    program, asked = tmp_path / "askpass", tmp_path / "asked"
    program.write_text(f"#!/bin/sh\necho asked >> {asked}\nexit 1\n")
    program.chmod(0o755)
    write_config(
        private_bus,
        f'askpass = "{program}"\n[keys.a]\nallowed_executables = ["/usr/bin/nope"]\n'
        "[keys.aa]\nconfirm = true\n",
    )
    # "a" and "aa" sort before "b": the agent used to stop at the first key that opens it.
    restricted, confirmed, free = (init_and_unlock(private_bus, n) for n in ("a", "aa", "b"))
    both = _sealed(tmp_path, restricted, confirmed, free)
    out = private_bus.keyagent("decrypt", str(both), check=False)
    assert (out.returncode, out.stdout) == (0, "hello\n"), out.stderr
    error, body = decrypt_in_message(private_bus, both.read_bytes())
    assert error == "" and body == (b"hello\n", "b")
    assert not asked.exists()  # the free key went first: no confirmation was asked

    only = _sealed(tmp_path, restricted)  # the restricted key alone: still refused
    out = private_bus.keyagent("decrypt", str(only), check=False)
    assert out.returncode == 4 and "Key 'a' may not be used" in out.stderr
    error, body = decrypt_in_message(private_bus, only.read_bytes())
    assert error == "org.freedesktop.DBus.Error.AccessDenied"
