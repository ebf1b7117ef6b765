"""age-plugin-keyagent through pyrage's plugin API (rage's plugin client, in Rust)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_support import ka
from conftest import PrivateBus
from plugin_support import plugin_bus, unlocked_key

__all__ = ["plugin_bus"]

pyrage = pytest.importorskip("pyrage")
from pyrage import plugin as pp  # noqa: E402


class Callbacks:
    """No person here: every question is declined."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def display_message(self, message: str) -> None:
        self.messages.append(message)

    def confirm(self, message: str, yes: str, no: str | None) -> bool | None:
        return None

    def request_public_string(self, description: str) -> str | None:
        return None

    def request_passphrase(self, description: str) -> str | None:
        return None


@pytest.fixture
def on_bus(plugin_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch) -> PrivateBus:
    """pyrage starts the plugin from this process: give it the bus's PATH and address."""
    for var in ("PATH", "DBUS_SESSION_BUS_ADDRESS", "PYTHONPATH"):
        monkeypatch.setenv(var, plugin_bus.env[var])
    return plugin_bus


def identity(bus: PrivateBus, name: str) -> object:
    return pp.Identity.from_str(bus.keyagent("identity", name).stdout.splitlines()[-1])


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_pyrage_encrypts_and_decrypts_through_the_agent(
    on_bus: PrivateBus, tmp_path: Path, key_type: str
) -> None:
    unlocked_key(on_bus, "work", "--type", key_type)
    ident = identity(on_bus, "work")
    cb = Callbacks()
    data = os.urandom(3000)
    ct = pyrage.encrypt(data, [pp.RecipientPluginV1("keyagent", [], [ident], cb)])
    stanza = b"-> X25519 " if key_type == "x25519" else b"-> mlkem768x25519 "
    assert stanza in ct.split(b"\n---")[0]
    assert pyrage.decrypt(ct, [pp.IdentityPluginV1("keyagent", [ident], cb)]) == data
    anyk = pp.Identity.default_for_plugin("keyagent")
    assert pyrage.decrypt(ct, [pp.IdentityPluginV1("keyagent", [anyk], cb)]) == data
    # What pyrage wrote, the agent opens by itself too.
    (tmp_path / "f.age").write_bytes(ct)
    out = ka(on_bus, "decrypt", str(tmp_path / "f.age"))
    assert (out.returncode, out.stdout) == (0, data), out.stderr


def test_pyrage_sees_the_plugin_error(on_bus: PrivateBus) -> None:
    recipient = unlocked_key(on_bus, "work")
    ct = pyrage.encrypt(b"x", [pyrage.x25519.Recipient.from_str(recipient)])
    on_bus.keyagent("lock", "work")
    ident = identity(on_bus, "work")
    with pytest.raises(pyrage.DecryptError, match="keyagent unlock work"):
        pyrage.decrypt(ct, [pp.IdentityPluginV1("keyagent", [ident], Callbacks())])
