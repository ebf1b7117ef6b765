"""Many callers at once, and a stream of malformed input: zero failures, agent stays up."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator

import pytest

from agent_support import FAST_ARGS, MANAGER, MI, CallError, Client, agent_pid, module_bus
from conftest import PrivateBus

CLIENTS = 32
ROUNDS = 50


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus(tmp_path_factory.mktemp("load"), agent_args=FAST_ARGS) as b:
        with Client(b.address) as c:
            c.create("load")
            c.m("CreateKey", "ssa{sv}", "pq", "pw", {"type": ("s", "mlkem768x25519")})
            c.unlock("load")
            c.unlock("pq")
        yield b


def test_32_clients_50_round_trips_each(bus: PrivateBus) -> None:
    pid = agent_pid(bus)
    failures: list[BaseException] = []
    done = []

    def client(n: int) -> None:
        rng = random.Random(n)
        try:
            with Client(bus.address) as c:
                for i in range(ROUNDS):
                    data = rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000]))
                    key = "pq" if i % 10 == 0 else "load"
                    ct = c.encrypt([key], data, armor=("b", i % 3 == 0))
                    assert c.decrypt(ct) == (data, key)
            done.append(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert sorted(done) == list(range(CLIENTS))
    assert bus.agent_pid() == pid


ALLOWED = {"Malformed", "Integrity", "NoMatch", "Unsupported", "Locked", "BadPassphrase"}


def test_malformed_input_gets_named_errors(bus: PrivateBus) -> None:
    rng = random.Random(7)
    with Client(bus.address) as c:
        pid = agent_pid(bus)
        good = c.encrypt(["load"], b"a real file " * 500)
        armored = c.encrypt(["load"], b"armored " * 500, armor=("b", True))
        samples = [os.urandom(rng.randrange(0, 3000)) for _ in range(60)]
        samples += [good[: rng.randrange(len(good))] for _ in range(60)]
        samples += [armored[: rng.randrange(len(armored))] for _ in range(40)]
        for _ in range(60):  # flip a byte anywhere
            src = bytearray(rng.choice([good, armored]))
            src[rng.randrange(len(src))] ^= 1 << rng.randrange(8)
            samples.append(bytes(src))
        samples += [
            b"age-encryption.org/v1\n-> X25519 " + os.urandom(40),
            b"age-encryption.org/v2\n",
            b"-----BEGIN AGE ENCRYPTED FILE-----\n",
        ]
        seen: dict[str, int] = {}
        for data in samples:
            try:
                plain, _key = c.decrypt(data)
            except CallError as e:
                assert e.short in ALLOWED, (e.name, e.text, data[:80])
                assert "Traceback" not in e.text and len(e.text) < 300
                seen[e.short] = seen.get(e.short, 0) + 1
            else:  # a flip in armor whitespace may leave the file valid: then it is intact
                assert plain in (b"a real file " * 500, b"armored " * 500)
        assert seen.get("Malformed", 0) > 50 and seen.get("Integrity", 0) > 10
        assert c.prop(MANAGER, MI, "Version") == "0.1.0"
        assert bus.agent_pid() == pid
