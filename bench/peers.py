"""The peers a user would pick instead of keyagent, set up once per run on the bench's bus.

- gnome-keyring's Secret Service (`gnome-keyring-daemon --unlock --components=secrets`, started
  on the bench's private bus with a throwaway home), read with `secretstorage` and with
  `secret-tool lookup` (one process per secret);
- `gpg -d` with its key's passphrase cached in a private gpg-agent;
- pyrage (compiled age) in-process, for the floor of a 1 KiB Decrypt.

Each peer is optional: a missing program makes its rows say why instead of failing the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_ATTRS = {"application": "keyagent-bench"}
GPG_PASSPHRASE = "bench passphrase, not a secret"
KEYRING_PASSWORD = b"bench keyring password, not a secret"


def _bus_pid(env: dict[str, str], name: str) -> int | None:
    from bench.harness import load_conftest

    pid: int | None = load_conftest().name_owner_pid(env, name)
    return pid


def _wait_for_name(env: dict[str, str], name: str, timeout: float) -> bool:
    """The daemon forks and returns before its child owns the name: wait for the owner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _bus_pid(env, name) is not None:
            return True
        time.sleep(0.05)
    return False


@dataclass
class GnomeKeyring:
    """A gnome-keyring secrets daemon on the bench's bus holding one secret."""

    env: dict[str, str]
    connection: Any
    item: Any

    @classmethod
    def start(cls, bus_env: dict[str, str], home: Path, secret: bytes) -> GnomeKeyring:
        if shutil.which("gnome-keyring-daemon") is None:
            raise RuntimeError(
                "gnome-keyring-daemon is not installed (apt-get install gnome-keyring)"
            )
        import secretstorage
        from jeepney.io.blocking import open_dbus_connection

        runtime = home / "run"
        runtime.mkdir(parents=True, mode=0o700, exist_ok=True)
        env = dict(
            bus_env, HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_RUNTIME_DIR=str(runtime)
        )
        subprocess.run(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets"],
            input=KEYRING_PASSWORD,
            env=env,
            capture_output=True,
            check=True,
            timeout=30,
        )
        if not _wait_for_name(env, "org.freedesktop.secrets", 30.0):
            raise RuntimeError("gnome-keyring-daemon did not claim org.freedesktop.secrets")
        conn = open_dbus_connection(bus=env["DBUS_SESSION_BUS_ADDRESS"])
        collection = secretstorage.get_default_collection(conn)
        item = collection.create_item("keyagent bench", SECRET_ATTRS, secret, replace=True)
        return cls(env, conn, item)

    def get_secret(self) -> bytes:
        return bytes(self.item.get_secret())

    def stop(self) -> None:
        pid = _bus_pid(self.env, "org.freedesktop.secrets")
        with contextlib.suppress(Exception):
            self.connection.close()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@dataclass(frozen=True)
class Gpg:
    """A private GNUPGHOME with a cv25519 key whose passphrase gpg-agent has cached."""

    env: dict[str, str]
    ciphertext: Path

    @classmethod
    def start(cls, base_env: dict[str, str], home: Path, plaintext: Path) -> Gpg:
        if shutil.which("gpg") is None:
            raise RuntimeError("gpg is not installed")
        home.mkdir(parents=True, mode=0o700, exist_ok=True)
        env = dict(base_env, GNUPGHOME=str(home))
        loopback = ["--batch", "--pinentry-mode", "loopback", "--passphrase", GPG_PASSPHRASE]
        uid = "keyagent bench <bench@example.invalid>"

        def gpg(*args: str) -> str:
            out = subprocess.run(
                ["gpg", *args], env=env, capture_output=True, text=True, check=True, timeout=60
            )
            return out.stdout

        gpg(*loopback, "--quick-gen-key", uid, "ed25519", "sign", "never")
        listing = gpg("--list-keys", "--with-colons")
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
        gpg(*loopback, "--quick-add-key", fpr, "cv25519", "encr", "never")
        ct = home / "bench.gpg"
        gpg("--batch", "--trust-model", "always", "-e", "-r", fpr, "-o", str(ct), str(plaintext))
        gpg(*loopback, "-d", "-o", os.devnull, str(ct))  # caches the passphrase in gpg-agent
        return cls(env, ct)

    def decrypt_argv(self, out: Path) -> list[str]:
        return ["gpg", "--batch", "--pinentry-mode", "error", "--yes", "-o", str(out), "-d",
                str(self.ciphertext)]  # fmt: skip

    def stop(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, check=False)
