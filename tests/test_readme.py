"""The README's bus examples, run exactly as written against a real agent on a private bus.

Every `gdbus call`, `busctl --user` and `dbus-send` line of the README's shell blocks is
extracted (backslash continuations joined), so the README cannot drift from what works.
Long-running commands (`gdbus monitor`) are left out.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from cli_support import create_key, ka_pw
from conftest import ROOT, BusFactory, PrivateBus

BUS_TOOLS = ("gdbus call", "busctl --user", "dbus-send")


def readme_bus_commands(readme: Path = ROOT / "README.md") -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", readme.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [shlex.split(line) for line in lines if line.startswith(BUS_TOOLS)]


def test_the_readme_shows_each_bus_tool() -> None:
    tools = {" ".join(argv[:2]) if argv[0] != "dbus-send" else argv[0]
             for argv in readme_bus_commands()}  # fmt: skip
    assert tools == {"gdbus call", "busctl --user", "dbus-send"}


def test_every_readme_bus_example_works(bus_factory: BusFactory) -> None:
    bus: PrivateBus = bus_factory()
    recipient = create_key(bus, "work")  # the README's examples name the key "work"
    assert ka_pw(bus, ["correct horse"], "unlock", "work").returncode == 0
    outputs = []
    for argv in readme_bus_commands():
        out = bus.run(argv, check=False)
        assert out.returncode == 0, (argv, out.stderr)
        outputs.append((argv, out.stdout))

    by_tool = {" ".join(argv): stdout for argv, stdout in outputs}
    version = next(v for k, v in by_tool.items() if k.startswith("gdbus call") and "Version" in k)
    assert re.search(r"\(<'\d+\.\d+\.\d+'>,\)", version)
    keys = next(v for k, v in by_tool.items() if k.endswith("Keys"))
    assert keys.startswith("ao 1 ") and "/org/example/KeyAgent/keys/work" in keys
    introspection = next(v for k, v in by_tool.items() if "introspect" in k)
    assert "org.example.KeyAgent.Key" in introspection and recipient in introspection
    # The dbus-send example is LockAll: the key it unlocked above is locked again.
    status = bus.keyagent("status", "--json").stdout
    assert '"locked": true' in status
