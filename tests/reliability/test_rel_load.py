"""Load: 64 concurrent clients, 100 mixed calls each; every result checked; the agent's fds
and memory come back near their baseline afterwards."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pyrage

from reliability import kit
from reliability.conftest import KEY, Agent

CLIENTS = 64
CALLS = 100
#: Python keeps some freed memory in its arenas; "near baseline" allows this much growth.
RSS_SLACK = 24 * 1024 * 1024


def _one_client(
    agent: Agent,
    seed: int,
    fixtures: list[tuple[bytes, bytes]],
    version: str,
    barrier: threading.Barrier,
    counts: Counter[str],
    failures: list[str],
) -> None:
    rng = random.Random(seed)
    with agent.client() as c:
        c.owner()
        barrier.wait(timeout=60)
        for i in range(CALLS):
            op = rng.choice(("encrypt", "decrypt", "version", "key"))
            try:
                if op == "encrypt":
                    data = rng.randbytes(rng.randrange(0, 3000))
                    ct = c.encrypt([agent.recipient], data, armor=rng.random() < 0.3)
                    ok = pyrage.decrypt(ct, [agent.identity]) == data
                elif op == "decrypt":
                    plain, ct = rng.choice(fixtures)
                    ok = c.decrypt(ct) == (plain, KEY)
                elif op == "version":
                    ok = c.version() == version
                else:
                    info = c.key(KEY)
                    ok = info.recipient == agent.recipient and not info.locked
            except Exception as e:  # every failure is counted, none may happen
                failures.append(f"client {seed} call {i} {op}: {type(e).__name__}: {e}")
                continue
            counts[op] += 1
            if not ok:
                failures.append(f"client {seed} call {i} {op}: wrong result")


def test_64_concurrent_clients(agent: Agent) -> None:
    rng = random.Random(64)
    recipient = pyrage.x25519.Recipient.from_str(agent.recipient)
    fixtures = []
    for n in (0, 1, 100, 1024, 5000):
        data = rng.randbytes(n)
        fixtures.append((data, pyrage.encrypt(data, [recipient])))
    pid = agent.pid()
    with agent.client() as c:  # warm every code path once, so the baseline includes it
        version = c.version()
        c.decrypt(c.encrypt([agent.recipient], b"warm"))
        c.key(KEY)
    with agent.client() as c:  # answered after the bus told the agent the warm client left
        c.version()
    fds0, rss0 = kit.fd_count(pid), kit.rss(pid)

    counts: Counter[str] = Counter()
    failures: list[str] = []
    barrier = threading.Barrier(CLIENTS)
    threads = [
        threading.Thread(
            target=_one_client,
            args=(agent, i, fixtures, version, barrier, counts, failures),
        )
        for i in range(CLIENTS)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "a client hung"

    assert agent.pid() == pid, "the agent restarted under load"
    fds1 = kit.settle_fds(pid, fds0)
    kit.wait_until(lambda: kit.rss(pid) <= rss0 + RSS_SLACK, timeout=5)
    rss1 = kit.rss(pid)
    kit.record(
        "load",
        clients=CLIENTS,
        calls=sum(counts.values()),
        by_kind=dict(counts),
        failures=len(failures),
        seconds=round(elapsed, 2),
        fds_before=fds0,
        fds_after=fds1,
        rss_before_mb=round(rss0 / 1e6, 1),
        rss_after_mb=round(rss1 / 1e6, 1),
    )
    assert not failures, failures[:5]
    assert sum(counts.values()) == CLIENTS * CALLS
    assert fds1 <= fds0, f"the agent holds {fds1 - fds0} more fds than before the load"
    assert rss1 <= rss0 + RSS_SLACK, f"RSS grew from {rss0} to {rss1} bytes"
