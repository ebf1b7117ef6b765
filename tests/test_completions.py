"""Shell completions, run by the real bash, zsh and fish: key names come from the key directory,
and completing one never starts the agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, PrivateBus, have

COMPLETIONS = ROOT / "data" / "completions"
KEYS = ["home", "work"]


@pytest.fixture
def keyring(private_bus: PrivateBus) -> dict[str, str]:
    """Key files as keyagentd keeps them, and a `keyagent` on PATH that would start the agent
    if a completion called it."""
    private_bus.home.mkdir(mode=0o700)
    for name in KEYS:
        (private_bus.home / f"{name}.key").write_bytes(b"sealed")
    (private_bus.home / ".spare.key.tmp123").write_bytes(b"")  # an interrupted write
    (private_bus.home / "notes.txt").write_bytes(b"")
    bindir = private_bus.tmp / "path"
    bindir.mkdir()
    cli = bindir / "keyagent"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m keyagent "$@"\n')
    cli.chmod(0o755)
    return {**private_bus.env, "PATH": f"{bindir}:{os.environ['PATH']}"}


def no_agent_started(bus: PrivateBus) -> bool:
    return bus.agent_pid() is None


def run(argv: list[str], env: dict[str, str]) -> str:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_bash_completes_key_names_without_the_agent(
    private_bus: PrivateBus, keyring: dict[str, str]
) -> None:
    script = f"""
source {COMPLETIONS}/keyagent.bash
COMP_WORDS=(keyagent unlock ''); COMP_CWORD=2; _keyagent; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(keyagent encrypt -k w); COMP_CWORD=3; _keyagent; echo "${{COMPREPLY[*]}}"
"""
    assert run(["bash", "--norc", "-c", script], keyring).splitlines() == ["home work", "work"]
    assert no_agent_started(private_bus)


def test_bash_finds_the_directory_as_the_agent_does(
    private_bus: PrivateBus, keyring: dict[str, str], tmp_path: Path
) -> None:
    # No KEYAGENT_HOME: $XDG_DATA_HOME/keyagent; a relative XDG_DATA_HOME is ignored.
    (tmp_path / "xdg" / "keyagent").mkdir(parents=True)
    (tmp_path / "xdg" / "keyagent" / "xdg-key.key").write_bytes(b"")
    (tmp_path / "home" / ".local" / "share" / "keyagent").mkdir(parents=True)
    (tmp_path / "home" / ".local" / "share" / "keyagent" / "home-key.key").write_bytes(b"")
    env = {k: v for k, v in keyring.items() if k != "KEYAGENT_HOME"}
    script = (
        f"source {COMPLETIONS}/keyagent.bash\n"
        "COMP_WORDS=(keyagent lock ''); COMP_CWORD=2; _keyagent; echo \"${COMPREPLY[*]}\"\n"
    )
    xdg = {**env, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert run(["bash", "--norc", "-c", script], xdg).split() == ["xdg-key"]
    home = {**env, "XDG_DATA_HOME": "relative", "HOME": str(tmp_path / "home")}
    assert run(["bash", "--norc", "-c", script], home).split() == ["home-key"]
    assert no_agent_started(private_bus)


@pytest.mark.skipif(not have("fish"), reason="needs fish (scripts/sysdeps.sh installs it)")
def test_fish_completes_key_names_without_the_agent(
    private_bus: PrivateBus, keyring: dict[str, str]
) -> None:
    script = f"source {COMPLETIONS}/keyagent.fish; complete -C 'keyagent unlock '"
    names = [line.split("\t")[0] for line in run(["fish", "-N", "-c", script], keyring).split("\n")]
    assert [n for n in names if n] == KEYS
    assert no_agent_started(private_bus)


# zsh completes only inside its line editor: drive an interactive zsh through zsh/zpty. Each line
# types `keyagent unlock PREFIX`, TAB, then goes to the start of the line and turns it into a
# `print`, so the completed line comes out as output; a marker command ends the read. (Only the
# insertion is checked: zle does not draw a list while keys are pending.)
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z TERM=dumb zsh -f -i
zpty -w z "PS1='> '; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D; print RE''ADY"
zpty -r z out '*READY*'
for prefix in w h s; do
  zpty -w z "keyagent unlock $prefix"$'\t\C-a'"print -r -- C:"
done
zpty -w z "print EN''D"
zpty -r z out '*END*'
print -r -- $out
zpty -d z
"""


@pytest.mark.skipif(not have("zsh"), reason="needs zsh (scripts/sysdeps.sh installs it)")
def test_zsh_completes_key_names_without_the_agent(
    private_bus: PrivateBus, keyring: dict[str, str]
) -> None:
    out = run(["zsh", "-f", "-c", ZSH_DRIVER, "zsh", str(COMPLETIONS)], keyring)
    printed = [line.strip() for line in out.replace("\r", "").splitlines()]
    completed = [line for line in printed if line.startswith("C:keyagent")]
    assert completed == [
        "C:keyagent unlock work",
        "C:keyagent unlock home",
        "C:keyagent unlock s",  # neither the interrupted write nor notes.txt
    ], out
    assert no_agent_started(private_bus)
