"""A `dbus-monitor --binary` capture of every plugin flow (age `-d -i`, `-d -j`, `-e -i`, the
post-quantum hybrid, a locked key unlocked through age's prompt, pyrage) holds no identity,
no seed and no passphrase: what crosses the bus is stanzas, file keys and key names."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from cli_support import ka, ka_pw
from conftest import PrivateBus, have
from keyagent import bech32
from keyagentd import age as agelib
from plugin_support import age, age_on_tty, identity_file, plugin_bus

__all__ = ["plugin_bus"]

pytestmark = pytest.mark.skipif(
    not (have("age") and have("dbus-monitor")), reason="installed by scripts/sysdeps.sh"
)

PASSPHRASES = {"classic": "monitor-pass-classic-81", "pq": "monitor-pass-pq-27"}


class Capture:
    """dbus-monitor --binary into a file; ready once it has seen our marker signal."""

    def __init__(self, bus: PrivateBus, path: Path) -> None:
        self.bus, self.path = bus, path
        self.out = path.open("wb")
        self.proc = subprocess.Popen(
            ["dbus-monitor", "--address", bus.address, "--binary"],
            stdout=self.out,
            stderr=subprocess.DEVNULL,
        )
        self.wait_for_marker("start")

    def wait_for_marker(self, word: str, timeout: float = 20) -> None:
        marker = f"keyagent-test-marker-{word}-{os.getpid()}"
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.path.read_bytes():
            assert time.monotonic() < deadline, "dbus-monitor never saw the marker"
            self.bus.run(
                ["dbus-send", "--session", "--type=signal", "/test", f"test.Marker.{word}",
                 f"string:{marker}"]
            )  # fmt: skip

    def stop(self) -> bytes:
        self.wait_for_marker("end")
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.out.close()
        return self.path.read_bytes()


def import_key(bus: PrivateBus, name: str, identity: str, tmp: Path) -> None:
    src = tmp / f"{name}.key"
    src.write_text(identity + "\n")
    r = ka_pw(bus, [PASSPHRASES[name], PASSPHRASES[name]], "import", name, str(src))
    assert r.returncode == 0, r.stderr


def test_capture_holds_no_secret(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    keys = {
        "classic": agelib.generate_identity("x25519"),
        "pq": agelib.generate_identity("mlkem768x25519"),
    }
    secrets: list[bytes] = [p.encode() for p in PASSPHRASES.values()]
    for name, ident in keys.items():
        text = ident.encode()
        seed = bech32.decode(text)[1]
        assert seed == bytes(ident.seed)
        secrets += [text.encode(), text.lower().encode(), seed]
        import_key(plugin_bus, name, text, tmp_path)
    idents = {name: identity_file(plugin_bus, name, tmp_path) for name in keys}

    capture = Capture(plugin_bus, tmp_path / "bus.pcap")
    # Encrypt to both keys through the plugin (age 1.1.1 writes the hybrid one too).
    files: dict[str, bytes] = {}
    for name, ident in idents.items():
        r = age(plugin_bus, "-e", "-i", str(ident), input=f"secret for {name}".encode())
        assert r.returncode == 0, r.stderr
        files[name] = r.stdout
    # Locked: unlock the classic key through age's own prompt.
    (tmp_path / "classic.age").write_bytes(files["classic"])
    run = age_on_tty(plugin_bus, "-d", "-i", str(idents["classic"]), str(tmp_path / "classic.age"))
    run.answer("Passphrase for keyagent key 'classic':", PASSPHRASES["classic"])
    code, out, err = run.finish()
    assert (code, out) == (0, b"secret for classic"), err
    ka_pw(plugin_bus, [PASSPHRASES["pq"]], "unlock", "pq")
    assert age(plugin_bus, "-d", "-j", "keyagent", input=files["pq"]).stdout == b"secret for pq"
    assert age(plugin_bus, "-d", "-i", str(idents["pq"]), input=files["pq"]).returncode == 0
    ka(plugin_bus, "lock", "pq")
    assert age(plugin_bus, "-d", "-j", "keyagent", input=files["pq"]).returncode != 0
    data = capture.stop()

    assert b"UnwrapFileKey" in data and b"UnlockFromFd" in data  # the capture saw the calls
    for secret in secrets:
        assert secret not in data
