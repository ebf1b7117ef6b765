"""Failed-unlock counters survive the agent (issue 13): any program of the user can kill
it, and the lock-out used to go with it. Counts live in NAME.failures next to the key,
written (crash-safe) before each guess is checked."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from agent_support import FAST_ARGS, PASS, CallError, Client, agent_pid
from conftest import BusFactory, PrivateBus
from keyagent.protocol import BadPassphrase, Failed
from keyagentd.failcounts import FailureFiles
from keyagentd.ratelimit import FailureLimiter


def test_an_attempt_is_on_disk_before_its_guess_is_checked(tmp_path: Path) -> None:
    files = FailureFiles(tmp_path)
    lim = FailureLimiter(store=files, clock=lambda: 1234.5)

    async def run() -> None:
        with pytest.raises(BadPassphrase):
            async with lim.attempt("k"):
                assert files.load("k") == (1, 1234.5)  # a kill now keeps the attempt
                raise BadPassphrase()
        with pytest.raises(Failed):
            async with lim.attempt("k"):
                assert files.load("k") == (2, 1234.5)
                raise Failed("the key file is gone: no guess was checked")
        assert files.load("k") == (1, 1234.5)
        async with lim.attempt("k"):
            pass
        assert files.load("k") is None and not (tmp_path / "k.failures").exists()

    asyncio.run(run())
    assert FailureLimiter(store=files).failures("k") == 0
    files.save("k", 4, 99.0)
    assert FailureLimiter(store=files, clock=lambda: 100.0).failures("k") == 4  # a restart
    (tmp_path / "k.failures").write_text("garbage")
    assert FailureLimiter(store=files).failures("k") > 100  # damaged: locked out, safe side


def _kill(bus: PrivateBus, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert bus.wait_agent_gone()


def test_a_lock_out_outlives_a_killed_agent(bus_factory: BusFactory) -> None:
    bus = bus_factory(agent_args=FAST_ARGS)
    counter = bus.home / "k.failures"
    with Client(bus.address) as c:
        c.create("k")
        for _ in range(2):
            with pytest.raises(CallError) as e:
                c.unlock("k", "wrong")
            assert e.value.short == "BadPassphrase"
        assert counter.read_text().split()[0] == "2"
        pid = agent_pid(bus)
    _kill(bus, pid)
    counter.write_text(f"10 {time.time()!r}\n")  # what ten wrong guesses leave
    with Client(bus.address) as c:
        with pytest.raises(CallError) as e:
            c.unlock("k", PASS)  # a new agent: still locked out, even for the right one
        assert e.value.short == "RateLimited"
        assert agent_pid(bus) != pid
    counter.write_text(f"10 {time.time() - 3600!r}\n")  # the quiet period has passed
    _kill(bus, agent_pid(bus))
    with Client(bus.address) as c:
        c.unlock("k", PASS)
        assert not counter.exists()
        with pytest.raises(CallError):
            c.unlock("k", "wrong")
        c.m("DeleteKey", "sa{sv}", "k", {})  # unlocked: deleting takes its counter too
    assert not counter.exists()
