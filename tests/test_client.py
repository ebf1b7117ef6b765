"""`keyagent.Client` against the real agent on a private bus."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from cli_support import files as files
from cli_support import private_bus as private_bus
from conftest import PrivateBus
from keyagent import AgentUnavailable, Client, KeyInfo
from keyagent.protocol import (
    BadPassphrase,
    InvalidName,
    KeyExists,
    Locked,
    Malformed,
    NoMatch,
    NoSuchKey,
)

PW = "tr0ub4dor&3"


@pytest.fixture
def client(private_bus: PrivateBus) -> Iterator[Client]:
    with Client(private_bus.address, timeout=30) as c:
        yield c


def test_version_pid_and_empty_keystore(client: Client, private_bus: PrivateBus) -> None:
    assert client.version()
    assert client.keys() == []
    assert client.key_names() == []
    assert client.agent_pid() == private_bus.agent_pid()


def test_key_lifecycle(client: Client) -> None:
    recipient = client.create_key("work", PW, label="laptop")
    assert recipient.startswith("age1") and len(recipient) == 62
    info = client.key("work")
    assert isinstance(info, KeyInfo)
    assert (info.name, info.label, info.type, info.recipient) == (
        "work",
        "laptop",
        "x25519",
        recipient,
    )
    assert info.locked and info.unlocked_until == 0 and info.seconds_left() is None
    assert info.created > 0
    assert client.keys() == [info]
    assert client.key_names() == ["work"]
    with pytest.raises(KeyExists):
        client.create_key("work", PW)

    with pytest.raises(BadPassphrase):
        client.unlock_with_pipe("work", "wrong")
    client.unlock_with_pipe("work", PW, idle_timeout=300, max_timeout=600)
    info = client.key("work")
    assert not info.locked and info.max_timeout == 600 and info.idle_timeout == 300
    left = info.seconds_left()
    assert left is not None and 0 < left <= 600
    client.lock("work")
    assert client.key("work").locked
    client.unlock("work", PW)  # the in-message variant
    assert not client.key("work").locked
    client.lock_all()
    assert client.key("work").locked

    client.change_passphrase("work", PW, "new passphrase")
    with pytest.raises(BadPassphrase):
        client.unlock_with_pipe("work", PW)
    exported = client.export("work", "new passphrase")
    identity = pyrage.passphrase.decrypt(exported, "new passphrase").decode()
    assert str(pyrage.x25519.Identity.from_str(identity.strip()).to_public()) == recipient

    with pytest.raises(BadPassphrase):
        client.delete_key("work", "wrong")
    client.delete_key("work", "new passphrase")
    assert client.keys() == []
    with pytest.raises(NoSuchKey):
        client.key("work")


def test_names_are_checked(client: Client) -> None:
    with pytest.raises(InvalidName):
        client.key("no/slashes")
    with pytest.raises(NoSuchKey, match="nope"):
        client.lock("nope")
    with pytest.raises(NoSuchKey):
        client.unlock_with_pipe("nope", PW)


def test_in_message_round_trip_and_locked(client: Client) -> None:
    client.create_key("a", PW)
    recipient = client.key("a").recipient
    ct = client.encrypt([recipient], b"hello")  # encrypting to a locked key works
    armored = client.encrypt(["a"], b"hello", armor=True)
    assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    with pytest.raises(Locked) as e:
        client.decrypt(ct)
    assert e.value.names == ("a",)
    client.unlock_with_pipe("a", PW)
    assert client.decrypt(ct) == (b"hello", "a")
    assert client.decrypt(armored, key="a") == (b"hello", "a")
    with pytest.raises(Malformed):
        client.decrypt(b"not an age file")
    other = pyrage.x25519.Identity.generate().to_public()
    with pytest.raises(NoMatch):
        client.decrypt(pyrage.encrypt(b"x", [other]))
    pw_file = client.encrypt([], b"secret", passphrase="file pw")
    with pytest.raises(BadPassphrase):
        client.decrypt(pw_file)
    assert client.decrypt(pw_file, passphrase="file pw") == (b"secret", "")


def test_imported_identity(client: Client) -> None:
    ident = pyrage.x25519.Identity.generate()
    client.import_key("imp", str(ident), PW, label="old")
    assert client.key("imp").recipient == str(ident.to_public())
    assert client.key("imp").label == "old"
    client.unlock_with_pipe("imp", PW)
    pt, key = client.decrypt(pyrage.encrypt(b"from pyrage", [ident.to_public()]))
    assert (pt, key) == (b"from pyrage", "imp")


def test_streams_through_fds(client: Client, files: Path) -> None:
    client.create_key("s", PW)
    client.unlock_with_pipe("s", PW)
    data = os.urandom(3 * 2**20 + 17)
    src, enc, dec = files / "src", files / "enc", files / "dec"
    src.write_bytes(data)
    with open(src, "rb") as fin, open(enc, "wb") as fout:
        written = client.encrypt_fd(["s"], fin.fileno(), fout.fileno())
    assert written == enc.stat().st_size
    with open(enc, "rb") as fin, open(dec, "wb") as fout:
        key, n = client.decrypt_fd(fin.fileno(), fout.fileno())
    assert (key, n) == ("s", len(data))
    assert dec.read_bytes() == data


def test_stream_progress_is_polled(client: Client) -> None:
    """The call cannot finish before the input closes; meanwhile progress gets called."""
    client.create_key("p", PW)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    ready = threading.Event()
    chunks: list[bytes] = []
    calls: list[int] = []

    def feed() -> None:
        os.write(in_w, b"x" * 1000)
        ready.wait(30)
        os.close(in_w)

    def drain() -> None:
        while chunk := os.read(out_r, 65536):
            chunks.append(chunk)

    feeder, drainer = threading.Thread(target=feed), threading.Thread(target=drain)
    feeder.start()
    drainer.start()

    def progress() -> None:
        calls.append(1)
        if len(calls) >= 2:
            ready.set()

    try:
        written = client.encrypt_fd(["p"], in_r, out_w, progress=progress)
    finally:
        ready.set()
        os.close(in_r)
        os.close(out_w)
        feeder.join()
        drainer.join()
    assert len(calls) >= 2
    assert written == len(b"".join(chunks))
    client.unlock_with_pipe("p", PW)
    assert client.decrypt(b"".join(chunks)) == (b"x" * 1000, "p")


def test_restarts_an_agent_that_went_away(client: Client, private_bus: PrivateBus) -> None:
    first = client.agent_pid()
    client.version()
    os.kill(first, signal.SIGTERM)
    assert private_bus.wait_agent_gone()
    assert not client.agent_running()
    assert client.version()  # re-activated and checked again
    assert client.agent_running()
    assert client.agent_pid() != first


def test_unreachable_bus(files: Path) -> None:
    with pytest.raises(AgentUnavailable, match="Cannot connect to the session bus"):
        Client(f"unix:path={files}/nothing")
