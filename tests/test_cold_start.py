"""The agent's cold start: what an activated agent has imported once it answered.

Most of a cold activation is Python importing modules (docs/DECISIONS.md, "Issue 15, round
three: cold start"): the agent loads cryptography, most of the age engine, argparse and the
like on first use, not before its first reply. The agent runs here as activation starts it,
through a wrapper that lists its modules when it exits.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from agent_support import agent_pid, wait_until
from conftest import TEST_AGENT_ARGS, BusFactory, PrivateBus
from keyagent.client import Client

#: Modules (and their submodules) an agent must not have loaded after answering its first
#: call, when neither a key nor a file was handled and no argument given.
LAZY = (
    "argparse",
    "argon2",
    "cryptography",
    "shutil",
    "html",
    "ssl",
    "keyagentd.age.engine",
    "keyagentd.age.format",
    "keyagentd.age.keys",
    "keyagentd.age.x25519",
    "keyagentd.age.hybrid",
    "keyagentd.age.ssh",
    "keyagentd.age.sshkey",
    "keyagentd.age.scrypt",
    "keyagentd.age.stream",
    "keyagentd.age.armor",
)

BOOT = """\
import atexit, runpy, sys

def dump():
    with open({out!r}, "w") as f:
        f.write("\\n".join(n for n, m in sys.modules.items() if m is not None))

atexit.register(dump)
runpy.run_module("keyagentd", run_name="__main__", alter_sys=True)
"""


def listing_agent(bus: PrivateBus, out: Path, args: tuple[str, ...]) -> None:
    """Make the bus activate an agent that writes its module names to ``out`` at exit."""
    boot = bus.tmp / "boot.py"
    boot.write_text(BOOT.format(out=str(out)))
    quoted = " ".join(f"'{a}'" for a in args)
    wrapper = bus.bindir / "keyagentd"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{boot}" {quoted}\n')


def modules_at_exit(bus: PrivateBus, out: Path) -> set[str]:
    pid = agent_pid(bus)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=20)
    return set(out.read_text().split())


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_first_reply_loads_no_lazy_module(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    with Client(bus.address) as c:  # a stored key: the keystore scan must not need them either
        c.create_key("stored", "pw")
    bus_pid = agent_pid(bus)
    os.kill(bus_pid, signal.SIGTERM)
    assert wait_until(lambda: bus.agent_pid() is None)
    out = bus.tmp / "modules-first-reply.txt"
    listing_agent(bus, out, ())  # no arguments, as activation files start it
    with Client(bus.address) as c:
        assert c.version()
        assert c.key_names() == ["stored"]
    modules = modules_at_exit(bus, out)
    assert "keyagentd.bus.service" in modules  # the listing is the agent's
    assert [name for name in LAZY if loaded(modules, name)] == []


def test_lazy_modules_load_on_first_use(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    out = bus.tmp / "modules-first-use.txt"
    listing_agent(bus, out, TEST_AGENT_ARGS)
    with Client(bus.address) as c:
        recipient = c.create_key("k", "pw")
        c.unlock("k", "pw")
        assert c.decrypt(c.encrypt([recipient], b"secret")) == (b"secret", "k")
    modules = modules_at_exit(bus, out)
    for name in ("argparse", "argon2", "cryptography", "keyagentd.age.engine"):
        assert loaded(modules, name), name


def test_no_arguments_mean_the_parsers_defaults() -> None:
    from keyagentd.__main__ import DEFAULTS, build_parser, parse_args

    parser = build_parser()
    options = {a.dest for a in parser._actions if a.dest not in ("help", "version")}
    assert options == set(DEFAULTS)  # an option without a default would be missing unparsed
    assert vars(parse_args([])) == vars(parser.parse_args([])) == dict(DEFAULTS)
    assert vars(parse_args(["--max-streams", "2"])) == {**DEFAULTS, "max_streams": 2}
