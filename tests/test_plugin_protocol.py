"""The plugin's state machines driven directly, as a client would: grease both ways, the spec's
`error` command for a broken conversation, a body that is not base64, a bad identity, and
answers the plugin does not expect. The conversation is scripted (the plugin's commands come
in a known order), and parsed here independently of the plugin's own framing code."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PrivateBus
from keyagent.plugin.encoding import encode_identity
from plugin_support import PLUGIN, age, plugin_bus, unlocked_key

__all__ = ["plugin_bus"]


def stanza(kind: str, *args: str, body: bytes = b"") -> bytes:
    b64 = base64.b64encode(body).rstrip(b"=")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"\n".join([" ".join(("->", kind, *args)).encode(), *lines]) + b"\n"


def parse(out: bytes) -> list[tuple[str, list[str], bytes]]:
    result: list[tuple[str, list[str], bytes]] = []
    lines = out.split(b"\n")
    i = 0
    while i < len(lines) and lines[i]:
        words = lines[i].decode().split(" ")
        assert words[0] == "->", out
        body = b""
        i += 1
        while True:
            body += lines[i]
            i += 1
            if len(lines[i - 1]) < 64:
                break
        result.append((words[1], words[2:], base64.b64decode(body + b"=" * (-len(body) % 4))))
    return result


def converse(
    bus: PrivateBus, machine: str, script: bytes
) -> tuple[int, list[tuple[str, list[str], bytes]], str]:
    r = subprocess.run(
        [PLUGIN, f"--age-plugin={machine}"],
        input=script,
        env=bus.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in r.stderr.decode()
    return r.returncode, parse(r.stdout), r.stderr.decode()


def header_stanzas(ct: bytes) -> list[bytes]:
    """The recipient stanzas of an age file, re-framed as identity-v1 recipient-stanza lines."""
    head = ct.split(b"\n--- ")[0].split(b"\n")[1:]
    out: list[bytes] = []
    for line in head:
        if line.startswith(b"-> "):
            out.append(b"-> recipient-stanza 0 " + line[3:] + b"\n")
        else:
            out[-1] += line + b"\n"
    return out


GREASE_IN = stanza("grease-3f", "12", "7", body=os.urandom(40))
UNSUPPORTED = stanza("unsupported")
OK = stanza("ok")


def test_identity_v1_with_grease(plugin_bus: PrivateBus) -> None:
    ct = age(plugin_bus, "-r", unlocked_key(plugin_bus, "work"), input=b"x").stdout
    script = (
        stanza("add-identity", encode_identity("work"))
        + GREASE_IN
        + b"".join(header_stanzas(ct))
        + stanza("some-future-command", "a")
        + stanza("done")
        + UNSUPPORTED  # the plugin's grease command
        + OK  # file-key
    )
    code, sent, _ = converse(plugin_bus, "identity-v1", script)
    assert code == 0
    (grease, *_), (kind, args, key), done = sent
    assert grease not in ("file-key", "error", "done", "msg", "request-secret")
    assert (kind, args, len(key)) == ("file-key", ["0"], 16)
    assert done[0] == "done"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (b"garbage\n", "malformed stanza line"),
        (b"-> recipient-stanza 0 X25519 abc\n!!!!\n", "not base64"),
        (b"-> recipient-stanza 0 X25519 abc\nAAA=\n", "not base64"),
        (b"-> recipient-stanza 0 X25519 abc\nAB\n", "non-canonical base64"),
        (b"-> recipient-stanza x X25519\n\n", "malformed recipient-stanza"),
        (b"-> add-identity\n\n", "malformed add-identity"),
    ],
)
def test_broken_conversation_gets_error_command(
    plugin_bus: PrivateBus, broken: bytes, message: str
) -> None:
    agent = plugin_bus.agent_pid()
    script = stanza("add-identity", encode_identity("")) + broken + stanza("done") + OK
    code, sent, _ = converse(plugin_bus, "identity-v1", script)
    assert code != 0
    (kind, args, body), *_ = sent
    assert (kind, args) == ("error", ["internal"])
    assert message in body.decode()
    assert plugin_bus.agent_pid() == agent


def test_bad_identity_gets_identity_error(plugin_bus: PrivateBus) -> None:
    script = stanza("add-identity", "AGE-PLUGIN-KEYAGENT-1QQQQQQ") + stanza("done")
    code, sent, _ = converse(plugin_bus, "identity-v1", script + UNSUPPORTED + OK)
    assert code != 0
    assert sent[1][:2] == ("error", ["identity", "0"])
    assert "Bech32" in sent[1][2].decode()


def test_unexpected_answer_ends_the_plugin(plugin_bus: PrivateBus) -> None:
    script = stanza("add-identity", encode_identity("")) + stanza("done") + stanza("bogus")
    code, sent, _ = converse(plugin_bus, "identity-v1", script)
    assert code != 0
    assert sent[-1][:2] == ("error", ["internal"])
    assert "answered" in sent[-1][2].decode()


def test_early_end_of_input(plugin_bus: PrivateBus) -> None:
    code, sent, _ = converse(plugin_bus, "identity-v1", stanza("add-identity", "x"))
    assert code != 0
    assert sent[0][:2] == ("error", ["internal"])


def test_recipient_v1(plugin_bus: PrivateBus, tmp_path: Path) -> None:
    unlocked_key(plugin_bus, "work")
    file_key = os.urandom(16)
    script = (
        stanza("add-identity", encode_identity("work"))
        + GREASE_IN
        + stanza("wrap-file-key", body=file_key)
        + stanza("extension-labels")
        + stanza("done")
        + UNSUPPORTED
        + OK
    )
    code, sent, _ = converse(plugin_bus, "recipient-v1", script)
    assert code == 0
    _, (kind, args, body), done = sent
    assert (kind, args[:2], len(body)) == ("recipient-stanza", ["0", "X25519"], 32)
    assert done[0] == "done"
    # The stanza opens through the agent, back to the same file key.
    back = plugin_bus.run(
        [
            "busctl", "--user", "--json=short", "call", "org.example.KeyAgent",
            "/org/example/KeyAgent", "org.example.KeyAgent", "UnwrapFileKey", "a(sasay)a{sv}",
            "1", "X25519", "1", args[2], str(len(body)), *map(str, body), "0",
        ]
    )  # fmt: skip
    assert f'"data":[[{",".join(map(str, file_key))}],"work"]' in back.stdout


def test_recipient_v1_refuses_plugin_recipients(plugin_bus: PrivateBus) -> None:
    script = (
        stanza("add-recipient", "age1keyagent1qqqq")
        + stanza("wrap-file-key", body=os.urandom(16))
        + stanza("done")
    )
    code, sent, _ = converse(plugin_bus, "recipient-v1", script + UNSUPPORTED + OK)
    assert code != 0
    assert sent[1][:2] == ("error", ["recipient", "0"])


def test_decrypt_path_imports_nothing_heavy(plugin_bus: PrivateBus) -> None:
    """The plugin starts on every decrypt: the client's own D-Bus code and the protocol names,
    nothing of the agent (the client never imports keyagentd), no cryptography, asyncio or
    dataclasses, and none of jeepney's import chain (typing, enum, socket, re)."""
    ct = age(plugin_bus, "-r", unlocked_key(plugin_bus, "work"), input=b"x").stdout
    script = (
        stanza("add-identity", encode_identity(""))
        + b"".join(header_stanzas(ct))
        + stanza("done")
        + UNSUPPORTED
        + OK
    )
    wrapper = plugin_bus.bindir / PLUGIN
    r = subprocess.run(
        [sys.executable, "-X", "importtime", str(wrapper), "--age-plugin=identity-v1"],
        input=script,
        env=plugin_bus.env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"-> file-key 0" in r.stdout
    modules = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.decode().splitlines()}
    assert "keyagent.transport" in modules and "keyagent.client" in modules
    heavy_modules = ("keyagentd", "cryptography", "asyncio", "dataclasses", "dbus_fast", "jeepney")
    for heavy in (*heavy_modules, "typing", "enum", "socket", "selectors", "re"):
        assert not [m for m in modules if m == heavy or m.startswith(heavy + ".")], heavy


@pytest.mark.parametrize(
    "text",
    [
        "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj",
        "AGE-PLUGIN-KEYAGENT-1",
        "AGE-PLUGIN-KEYAGENT-1WAHHYETVVSRCDX2",  # bad checksum
        "age1Zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj",  # mixed case
        "age1",
        "a\u00e9ge1qqqqqqq",
    ],
)
def test_client_and_engine_bech32_agree(text: str) -> None:
    """The client's Bech32 (the plugin may not import the agent) and the age engine's own
    (age/ imports nothing of the client) are two copies: they must accept and refuse alike."""
    from keyagent import bech32 as client
    from keyagent.protocol import Malformed
    from keyagentd.age import ParseError
    from keyagentd.age import bech32 as engine

    try:
        expected: tuple[str, bytes] | None = engine.decode(text)
    except ParseError:
        expected = None
    try:
        got: tuple[str, bytes] | None = client.decode(text)
    except Malformed:
        got = None
    assert got == expected
    if expected is not None:
        assert client.encode(*expected) == engine.encode(*expected)
    for data in (b"", b"work", bytes(range(256))):
        encoded = engine.encode("age-plugin-keyagent-", data)
        assert client.encode("age-plugin-keyagent-", data) == encoded
        assert client.decode(encoded.upper()) == engine.decode(encoded.upper())
