"""No secret of the `keyagent` command crosses the bus (issue 13).

A `dbus-monitor --binary` capture (what any program of the user can run) around init, import,
passwd, export, delete of a locked key, encrypt -p, decrypt of a passphrase file and unlock
holds none of the passphrases, the identity, or the exported file: they travel in pipes
(the `<secret>-fd` options). The in-message forms still work, visible to the monitor.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pyrage

from agent_support import CallError, Client, opt
from bus_monitor import BusCapture
from cli_support import files as files
from cli_support import ka, ka_pw
from cli_support import private_bus as private_bus
from conftest import PrivateBus


def _pw(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(12)}"


def test_command_keeps_every_secret_off_the_bus(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    keygen = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    identity = next(ln for ln in keygen.stdout.splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    ident_file = files / "id.txt"
    ident_file.write_text(keygen.stdout)
    pw = {k: _pw(k) for k in ("init", "import", "new", "file", "enc", "del")}
    pfile = files / "p.age"
    pfile.write_bytes(pyrage.passphrase.encrypt(b"file body\n", pw["file"]))
    plain = files / "plain.txt"
    plain.write_bytes(b"hello\n")
    ka_pw(bus, [pw["del"]], "init", "gone")  # started before the capture: the agent runs

    with BusCapture(bus) as capture:
        steps = [
            ka_pw(bus, [pw["init"]], "init", "k"),
            ka_pw(bus, [pw["import"]], "import", "imp", str(ident_file)),
            ka_pw(bus, [pw["init"], pw["new"]], "passwd", "k"),
            ka_pw(bus, [pw["new"]], "export", "k", "-o", str(files / "k.age")),
            ka_pw(bus, [pw["new"]], "unlock", "k"),
            ka(bus, "lock", "gone"),
            ka_pw(bus, [pw["del"]], "delete", "gone", "--yes"),
            ka_pw(bus, [pw["enc"]], "encrypt", "-p", "-o", str(files / "e.age"), str(plain)),
            ka_pw(bus, [pw["file"]], "decrypt", "-o", str(files / "p.txt"), str(pfile)),
        ]
        captured = capture.stop()
    for r in steps:
        assert r.returncode == 0, r.stderr.decode()
    assert (files / "p.txt").read_bytes() == b"file body\n"
    assert pyrage.passphrase.decrypt((files / "e.age").read_bytes(), pw["enc"]) == b"hello\n"
    exported = (files / "k.age").read_bytes()
    assert pyrage.passphrase.decrypt(exported, pw["new"]).startswith(b"AGE-SECRET-KEY-1")
    assert b"CreateKey" in captured  # the capture saw the calls
    for name, value in pw.items():
        assert value.encode() not in captured, f"the {name} passphrase crossed the bus"
    assert identity.encode() not in captured and identity.lower().encode() not in captured
    body = exported.splitlines()[1]  # a line of the armored file
    assert body not in captured, "the exported file crossed the bus"
    assert b"ExportWithOptions" in captured


def test_in_message_forms_still_work_and_are_visible(private_bus: PrivateBus) -> None:
    """The documented limit: a passphrase in a message is seen by a monitor."""
    bus = private_bus
    client = Client(bus.address)
    secret = _pw("inline")
    with BusCapture(bus) as capture:
        client.m("CreateKey", "ssa{sv}", "inl", secret, {})
        client.k("inl", "Unlock", "sa{sv}", secret, {})
        captured = capture.stop()
    assert secret.encode() in captured


def test_secret_fd_options(private_bus: PrivateBus) -> None:
    """Both forms at once are refused; a fd option works for a raw client too."""
    client = Client(private_bus.address)
    r, w = os.pipe()
    os.write(w, b"fd pw\n")
    os.close(w)
    try:
        try:
            client.m("CreateKey", "ssa{sv}", "both", "inline", opt(**{"passphrase-fd": ("h", r)}))
            raise AssertionError("both forms accepted")
        except CallError as exc:
            assert exc.name.endswith("InvalidArgs")
        client.m("CreateKey", "ssa{sv}", "viafd", "", opt(**{"passphrase-fd": ("h", r)}))
    finally:
        os.close(r)
    client.k("viafd", "Unlock", "sa{sv}", "fd pw", {})
