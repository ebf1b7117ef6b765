"""typage (npm age-encryption 0.3, FiloSottile's TypeScript age) calling UnwrapFileKey from Node
through a custom Identity, and age-plugin-keyagent reading what typage wrote.

The test installs age-encryption from the npm registry into a cache directory
($KEYAGENT_TEST_CACHE, default ~/.cache/keyagent-tests) on first use."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cli_support import ka
from conftest import ROOT, PrivateBus, have
from plugin_support import age, plugin_bus, unlocked_key

__all__ = ["plugin_bus"]

pytestmark = pytest.mark.skipif(
    not (have("node") and have("npm") and have("busctl")), reason="needs node, npm and busctl"
)

TYPAGE = "age-encryption@0.3"
SCRIPT = ROOT / "tests" / "js" / "agent_identity.mjs"


@pytest.fixture(scope="module")
def typage() -> Path:
    """The installed module's entry point (installed from the npm registry when missing)."""
    default = Path.home() / ".cache" / "keyagent-tests"
    cache = Path(os.environ.get("KEYAGENT_TEST_CACHE", default)) / "typage"
    package = cache / "node_modules" / "age-encryption"
    manifest = package / "package.json"
    if not manifest.exists() or not json.loads(manifest.read_text())["version"].startswith("0.3."):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache), TYPAGE],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return package / "dist" / "index.js"


def node(bus: PrivateBus, typage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bus.run(["node", str(SCRIPT), str(typage), *args], check=False, timeout=120)


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_typage_decrypts_through_unwrap_file_key(
    plugin_bus: PrivateBus, typage: Path, tmp_path: Path, key_type: str
) -> None:
    recipient = unlocked_key(plugin_bus, "work", "--type", key_type)
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(5000))
    enc, dec = tmp_path / "f.age", tmp_path / "out"
    r = node(plugin_bus, typage, "encrypt", str(plain), str(enc), recipient)
    assert r.returncode == 0, r.stderr
    r = node(plugin_bus, typage, "decrypt", str(enc), str(dec))
    assert r.returncode == 0, r.stderr
    assert "unwrapped with agent key work" in r.stderr
    assert dec.read_bytes() == plain.read_bytes()
    # age 1.1.1 reads typage's file through the plugin, even the post-quantum one.
    assert age(plugin_bus, "-d", "-j", "keyagent", str(enc)).stdout == plain.read_bytes()


def test_typage_sees_no_match_and_locked(
    plugin_bus: PrivateBus, typage: Path, tmp_path: Path
) -> None:
    recipient = unlocked_key(plugin_bus, "work")
    keygen = plugin_bus.run(["age-keygen"]).stdout
    foreign = next(ln.split()[-1] for ln in keygen.splitlines() if "public key" in ln)
    (tmp_path / "plain").write_bytes(b"x")
    enc = tmp_path / "f.age"
    node(plugin_bus, typage, "encrypt", str(tmp_path / "plain"), str(enc), foreign)
    r = node(plugin_bus, typage, "decrypt", str(enc), str(tmp_path / "out"))
    assert r.returncode != 0 and "no identity matched" in r.stderr.lower()
    node(plugin_bus, typage, "encrypt", str(tmp_path / "plain"), str(enc), recipient)
    ka(plugin_bus, "lock", "work")
    r = node(plugin_bus, typage, "decrypt", str(enc), str(tmp_path / "out"))
    assert r.returncode != 0 and "'work' is locked" in r.stderr
    assert not (tmp_path / "out").exists()
