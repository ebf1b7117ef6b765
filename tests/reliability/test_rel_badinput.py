"""Bad input: malformed age files (random, mutated, cut at every length) through Decrypt and
DecryptFd, wrong argument types through dbus-send, oversized arrays, invalid key names, and
10,000 wrong passphrases. Each gets a named error; the agent stays up with its keys intact."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PrivateBus
from keyagent import protocol
from keyagent.client import Client
from keyagent.protocol import (
    BadPassphrase,
    Integrity,
    InvalidArgs,
    InvalidName,
    KeyAgentError,
    Malformed,
    NoMatch,
    NoSuchKey,
    RateLimited,
    TooLarge,
    Unsupported,
)
from keyagentd.keystore import KeyStore
from reliability import kit
from reliability.conftest import KEY, PASSPHRASE, Agent

#: What a damaged or foreign file may fairly get (never Failed: that is an internal error).
FILE_ERRORS = (Malformed, Integrity, NoMatch, Unsupported, BadPassphrase)
SEEN: Counter[str] = Counter()

PLAINS = [b"", b"a" * 100, os.urandom(64 * 1024 + 10)]


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[Client]:
    with agent.client() as c:
        yield c


@pytest.fixture(scope="module")
def samples(agent: Agent) -> list[tuple[bytes, bytes]]:
    """(plaintext, valid file) pairs: binary and armored, made by pyrage."""
    r = pyrage.x25519.Recipient.from_str(agent.recipient)
    out = [(p, pyrage.encrypt(p, [r])) for p in PLAINS]
    out.append((b"armored", pyrage.encrypt(b"armored", [r], armored=True)))
    return out


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("in")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def check_decrypt(c: Client, data: bytes, plain: bytes | None) -> None:
    """Decrypt must fail with a named file error and return nothing; DecryptFd likewise,
    and what it wrote must be a prefix of the true plaintext (authenticated chunks only)."""
    with pytest.raises(FILE_ERRORS) as e:
        c.decrypt(data)
    SEEN[type(e.value).__name__] += 1
    fi, fo = _memfd(data), os.memfd_create("out")
    try:
        with pytest.raises(FILE_ERRORS) as e:
            c.decrypt_fd(fi, fo)
        SEEN[type(e.value).__name__] += 1
        os.lseek(fo, 0, os.SEEK_SET)
        written = os.read(fo, 1 << 20)
    finally:
        os.close(fi)
        os.close(fo)
    if plain is not None:
        assert plain.startswith(written), "DecryptFd wrote bytes that are not the plaintext"
    else:
        assert written == b""


def test_cut_at_every_length(
    agent: Agent, client: Client, samples: list[tuple[bytes, bytes]]
) -> None:
    plain, ct = samples[1]  # 100 bytes: a header and one short chunk
    for n in range(len(ct)):
        check_decrypt(client, ct[:n], plain)
    kit.record("cut_every_length", file_bytes=len(ct), calls=2 * len(ct))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=3000)
    | st.binary(max_size=600).map(lambda b: b"age-encryption.org/v1\n" + b)
)
def test_random_bytes(client: Client, data: bytes) -> None:
    check_decrypt(client, data, None)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    choice=st.integers(0, len(PLAINS)),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete"]),
            st.floats(0, 1),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_files(
    client: Client,
    samples: list[tuple[bytes, bytes]],
    choice: int,
    edits: list[tuple[str, float, int]],
) -> None:
    plain, ct = samples[choice]
    buf = bytearray(ct)
    for op, where, value in edits:
        i = min(int(where * len(buf)), len(buf) - 1)
        if op == "flip":
            buf[i] ^= 1 << (value % 8)
        elif op == "set":
            buf[i] = value
        elif op == "insert":
            buf.insert(i, value)
        elif len(buf) > 1:
            del buf[i]
    if bytes(buf) == ct:
        return  # the edits cancelled out
    if choice == len(PLAINS):  # armor: whitespace edits may still decode to the same file
        try:
            client.decrypt(bytes(buf))
        except FILE_ERRORS as e:
            SEEN[type(e).__name__] += 1
            return
        return
    check_decrypt(client, bytes(buf), plain)


def test_agent_survived_bad_files(agent: Agent, client: Client) -> None:
    """Runs after the file tests of this module: same agent, key intact and working."""
    with agent.client() as c:
        assert not c.key(KEY).locked
        data = os.urandom(5000)
        assert c.decrypt(c.encrypt([agent.recipient], data)) == (data, KEY)
    kit.record(
        "bad_files",
        errors_by_name=dict(sorted(SEEN.items())),
        total=sum(SEEN.values()),
        agent_pid_unchanged=True,
    )


DBUS_SEND_CASES = [
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.Decrypt", ["string:hello"]),
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.Encrypt", ["int32:7", "string:x"]),
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.CreateKey", ["string:only"]),
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.DeleteKey", ["uint64:1"]),
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.LockAll", ["string:extra"]),
    (protocol.MANAGER_PATH, f"{protocol.MANAGER_INTERFACE}.DecryptFd", ["string:x", "string:y"]),
    (protocol.key_path(KEY), f"{protocol.KEY_INTERFACE}.Unlock", ["uint32:5"]),
    (protocol.key_path(KEY), f"{protocol.KEY_INTERFACE}.ChangePassphrase", ["array:string:a,b"]),
    (protocol.key_path(KEY), f"{protocol.KEY_INTERFACE}.Export", ["boolean:true"]),
]


def test_wrong_argument_types_via_dbus_send(agent: Agent) -> None:
    pid = agent.pid()
    for path, method, args in DBUS_SEND_CASES:
        out = agent.bus.run(
            [
                "dbus-send",
                "--session",
                "--print-reply",
                f"--dest={protocol.BUS_NAME}",
                path,
                method,
                *args,
            ],
            check=False,
        )
        assert out.returncode != 0, (method, out.stdout)
        assert protocol.INVALID_ARGS in out.stderr, (method, out.stderr)
    assert agent.pid() == pid
    kit.record("dbus_send_wrong_types", calls=len(DBUS_SEND_CASES))


def test_oversized_arrays(agent: Agent, client: Client) -> None:
    # A ciphertext may exceed the plaintext cap (armor: by a third); 32 MiB is past both.
    with pytest.raises(TooLarge):
        client.decrypt(b"\0" * (32 * 1024 * 1024))
    with pytest.raises(TooLarge):
        client.encrypt([agent.recipient], b"\0" * (protocol.DEFAULT_MAX_PAYLOAD + 1))
    with pytest.raises((InvalidName, Malformed, TooLarge, InvalidArgs)):
        client.encrypt(["not a recipient!"] * 100_000, b"x")
    many_opts = {f"opt{i}": ("s", "x") for i in range(50_000)}
    with pytest.raises((InvalidArgs, TooLarge)):
        client._manager("Decrypt", "aya{sv}", (b"x", many_opts))
    assert agent.pid()
    kit.record("oversized", calls=4)


BAD_NAMES = ["", "bad name", "x" * 65, "../etc", "a/b", "naïve", "semi;colon", "dot.ted"]


def _name_calls(client: Client, agent: Agent, name: str) -> list[Callable[[], object]]:
    valid = pyrage.encrypt(b"x", [agent.identity.to_public()])
    calls: list[Callable[[], object]] = [
        lambda: client.create_key(name, "p"),
        lambda: client.import_key(name, str(agent.identity), "p"),
        lambda: client.delete_key(name, "p"),
        lambda: client.encrypt([name or " "], b"x"),
    ]
    if name:  # the client sends no key option for ""
        calls.append(lambda: client.decrypt(valid, key=name))
    return calls


def test_invalid_key_names(agent: Agent, client: Client) -> None:
    calls = 0
    for name in BAD_NAMES:
        for call in _name_calls(client, agent, name):
            with pytest.raises((InvalidName, InvalidArgs)):
                call()
            calls += 1
    with agent.client() as c:
        assert c.key_names() == [KEY]
    kit.record("invalid_names", calls=calls)


WRONG = 10_000


def test_10000_wrong_passphrases(agent: Agent, client: Client) -> None:
    """Two keys, 5,000 wrong guesses each, in parallel: a few slowed BadPassphrase, then
    RateLimited; the keys stay intact and the right passphrase still opens the file."""
    names = ["guess1", "guess2"]
    for n in names:
        client.create_key(n, PASSPHRASE)
    pid = agent.pid()
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def guess(name: str) -> None:
        with agent.client(timeout=60) as c:
            for i in range(WRONG // len(names)):
                try:
                    c.unlock(name, f"wrong {i}")
                    outcome = "unlocked?!"
                except KeyAgentError as e:
                    outcome = type(e).__name__
                with lock:
                    seen[outcome] += 1

    threads = [threading.Thread(target=guess, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in threads)
    assert set(seen) <= {"BadPassphrase", "RateLimited"}, seen
    assert sum(seen.values()) == WRONG
    assert seen["RateLimited"] > WRONG * 0.9
    assert agent.pid() == pid
    store = KeyStore(agent.bus.home)
    for n in names:
        store.unseal(n, PASSPHRASE)[:] = bytes(32)  # the files are intact
        with pytest.raises(RateLimited):
            client.unlock(n, PASSPHRASE)  # still limited: the quiet period has not passed
    with pytest.raises(NoSuchKey):
        client.key("guess3")
    kit.record("wrong_passphrases", attempts=WRONG, outcomes=dict(seen))


EDGE_NAMES = ["a", "Z9", "under_score", "with-dash", "-", "x" * 64]


def test_names_at_the_edge_of_the_rules_survive_a_restart(private_bus: PrivateBus) -> None:
    """Every name `is_valid_key_name` admits gets a key object, and the agent starts again
    with those keys on disk (a name the bus cannot carry must not brick the keystore)."""
    assert all(protocol.is_valid_key_name(n) for n in EDGE_NAMES)
    failures = {}
    with Client(private_bus.address) as c:
        for name in EDGE_NAMES:
            try:
                c.create_key(name, PASSPHRASE)
                c.key(name)
            except KeyAgentError as e:
                failures[name] = f"{type(e).__name__}: {e}"
        pid = c.agent_pid()
    os.kill(pid, signal.SIGTERM)
    assert private_bus.wait_agent_gone(10)
    try:
        with Client(private_bus.address) as c:
            names = c.key_names()
    except KeyAgentError as e:
        names = []
        failures["restart"] = f"{type(e).__name__}: {e}"
    assert not failures, failures
    assert sorted(names) == sorted(EDGE_NAMES)
