"""SSH keys through the age plugin: `age -d -j keyagent` and `age -d -i identity.txt` open files
that Debian's age encrypted to an SSH public key (`age -R key.pub`), with the key in the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_support import ka_pw
from conftest import PrivateBus, have
from plugin_support import age, identity_file, plugin_bus
from test_cli_ssh import PW, import_ssh, keygen

__all__ = ["plugin_bus"]

pytestmark = pytest.mark.skipif(
    not (have("age") and have("ssh-keygen")), reason="needs the age command and ssh-keygen"
)


@pytest.mark.parametrize("kind", [("-t", "ed25519"), ("-t", "rsa", "-b", "2048")])
def test_age_decrypts_ssh_files_through_the_agent(
    plugin_bus: PrivateBus, tmp_path: Path, kind: tuple[str, ...]
) -> None:
    key = keygen(tmp_path, "id", *kind)
    import_ssh(plugin_bus, "sshkey", key)
    assert ka_pw(plugin_bus, [PW], "unlock", "sshkey").returncode == 0
    sealed = age(plugin_bus, "-R", f"{key}.pub", input=b"for the ssh key")
    assert sealed.returncode == 0, sealed.stderr
    by_j = age(plugin_bus, "-d", "-j", "keyagent", input=sealed.stdout)
    assert by_j.returncode == 0, by_j.stderr
    assert by_j.stdout == b"for the ssh key"
    ident = identity_file(plugin_bus, "sshkey", tmp_path)
    by_i = age(plugin_bus, "-d", "-i", str(ident), input=sealed.stdout)
    assert by_i.stdout == b"for the ssh key"
