"""SSH keys through the agent and the `keyagent` command: import (OpenSSH passphrase from an fd
or the terminal), recipient, encrypt/decrypt both ways with Debian's `age`, -R authorized_keys
files, export; and bad keys refused with one sentence and nothing written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cli_support import TtyRun, ka, ka_pw, passphrase_fd
from cli_support import files as files
from cli_support import private_bus as private_bus
from conftest import PrivateBus, have
from keyagentd import age
from ssh_support import keygen

pytestmark = pytest.mark.skipif(
    not (have("age") and have("ssh-keygen")), reason="needs the age command and ssh-keygen"
)
PW = "agent pw"
SSH_PW = "ssh pw 123"


def public(key: Path) -> str:
    """The key's `type base64` (the .pub line without its comment)."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def import_ssh(bus: PrivateBus, name: str, key: Path, ssh_pw: str | None = None) -> str:
    """`keyagent import` with the agent passphrase on one fd and the SSH one on another."""
    if ssh_pw is None:
        r = ka_pw(bus, [PW], "import", name, str(key))
    else:
        with passphrase_fd(ssh_pw) as sfd, passphrase_fd(PW) as afd:
            r = ka(
                bus,
                "import",
                name,
                str(key),
                "--ssh-passphrase-fd",
                str(sfd),
                "--passphrase-fd",
                str(afd),
                pass_fds=(sfd, afd),
            )
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def clear_copy(key: Path, passphrase: str) -> Path:
    """The key without its passphrase (age -d -i would ask for it on a terminal)."""
    copy = key.with_name(key.name + ".clear")
    copy.write_bytes(key.read_bytes())
    copy.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", passphrase, "-N", "", "-f", str(copy)],
        check=True,
        capture_output=True,
    )
    return copy


def age_d(key: Path, data: bytes) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(key)], input=data, capture_output=True, check=True
    ).stdout


def test_import_decrypt_encrypt_with_age(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    ed = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    rsa = keygen(files, "rsa", "-t", "rsa", "-b", "2048", "-m", "PEM")
    assert import_ssh(bus, "ed", ed, SSH_PW) == public(ed)
    assert import_ssh(bus, "rsa", rsa) == public(rsa)
    r = ka(bus, "recipient", "ed", "rsa")
    assert r.stdout.decode().splitlines() == [public(ed), public(rsa)]
    types = {ln.split()[0]: ln.split()[1] for ln in ka(bus, "list").stdout.decode().splitlines()}
    assert types == {"ed": "ssh-ed25519", "rsa": "ssh-rsa"}
    # The key files hold neither OpenSSH key in the clear.
    for name, key in (("ed", ed), ("rsa", rsa)):
        stored = (bus.home / f"{name}.key").read_text()
        body = "".join(key.read_text().splitlines()[1:-1])
        assert body[40:100] not in stored and public(key) in stored

    data = os.urandom(300_000)
    (files / "plain").write_bytes(data)
    for key, name in ((ed, "ed"), (rsa, "rsa")):
        clear = clear_copy(key, SSH_PW) if key is ed else key
        enc = files / f"{name}.age"
        subprocess.run(
            ["age", "-R", f"{key}.pub", "-o", str(enc), str(files / "plain")], check=True
        )
        r = ka(bus, "decrypt", str(enc))
        assert r.returncode == 1 and b"locked" in r.stderr  # not unlocked yet
        assert ka_pw(bus, [PW], "unlock", name).returncode == 0
        r = ka(bus, "decrypt", "-o", str(files / f"{name}.out"), str(enc))
        assert r.returncode == 0, r.stderr
        assert (files / f"{name}.out").read_bytes() == data
        # keyagent -> age, by recipient string (with its comment) and by key name
        for args in (["-r", Path(f"{key}.pub").read_text().strip()], ["-k", name, "-a"]):
            r = ka(bus, "encrypt", *args, input=data)
            assert r.returncode == 0, r.stderr
            assert age_d(clear, r.stdout) == data


def test_recipients_file_and_mixing(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    ed = keygen(files, "ed", "-t", "ed25519")
    rsa = keygen(files, "rsa", "-t", "rsa", "-b", "3072")
    ec = keygen(files, "ec", "-t", "ecdsa")
    x = files / "x.txt"
    subprocess.run(["age-keygen", "-o", str(x)], check=True, capture_output=True)
    x_recipient = subprocess.run(
        ["age-keygen", "-y", str(x)], capture_output=True, check=True, text=True
    ).stdout.strip()
    authorized = files / "authorized_keys"
    authorized.write_text(
        "# my keys\n\n"
        f'command="echo hi there",no-pty {Path(f"{ed}.pub").read_text()}'
        f"{Path(f'{ec}.pub').read_text()}"
        f"  {Path(f'{rsa}.pub').read_text()}"
        f"{x_recipient}\n"
    )
    r = ka(bus, "encrypt", "-R", str(authorized), input=b"to three")
    assert r.returncode == 0, r.stderr
    assert b"line 4: ECDSA SSH keys cannot be used with age" in r.stderr  # skipped, as age does
    for key in (ed, rsa, x):
        assert age_d(key, r.stdout) == b"to three"
    # An agent key of each kind in one file: X25519 and SSH mix, as age allows.
    import_ssh(bus, "ed", ed)
    assert ka_pw(bus, [PW], "import", "x", str(x)).returncode == 0
    r = ka(bus, "encrypt", "-k", "ed", "-k", "x", input=b"mixed")
    assert age_d(ed, r.stdout) == b"mixed" and age_d(x, r.stdout) == b"mixed"
    bad = files / "bad"
    bad.write_text("ssh-ed25519 AAAA!!notbase64 secret-looking\n")
    r = ka(bus, "encrypt", "-R", str(bad), input=b"x")
    assert r.returncode == 1 and b"malformed recipient at line 1" in r.stderr
    assert b"secret-looking" not in r.stderr


def test_export_contains_the_openssh_key(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    ed = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    import_ssh(bus, "ed", ed, SSH_PW)
    r = ka_pw(bus, [PW], "export", "ed", "-o", str(files / "ed.age"))
    assert r.returncode == 0, r.stderr
    text = age.decrypt_bytes([age.ScryptIdentity(PW)], (files / "ed.age").read_bytes())
    assert text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    exported = files / "exported"
    exported.write_bytes(text)
    exported.chmod(0o600)
    enc = ka(bus, "encrypt", "-k", "ed", input=b"exported key works").stdout
    assert age_d(exported, enc) == b"exported key works"  # unencrypted: age asks nothing


def test_same_fd_for_both_passphrases(private_bus: PrivateBus, files: Path) -> None:
    key = keygen(files, "rsa", "-t", "rsa", "-b", "2048", passphrase=SSH_PW)
    with passphrase_fd(SSH_PW, PW) as fd:
        args = ["--ssh-passphrase-fd", str(fd), "--passphrase-fd", str(fd)]
        r = ka(private_bus, "import", "r", str(key), *args, pass_fds=(fd,))
    assert r.returncode == 0, r.stderr
    assert ka_pw(private_bus, [PW], "unlock", "r").returncode == 0
    plain = keygen(files, "plain", "-t", "ed25519")
    with passphrase_fd("", PW) as fd:  # the first line is the SSH one even when unused
        args = ["--ssh-passphrase-fd", str(fd), "--passphrase-fd", str(fd)]
        r = ka(private_bus, "import", "p", str(plain), *args, pass_fds=(fd,))
    assert r.returncode == 0, r.stderr
    assert ka_pw(private_bus, [PW], "unlock", "p").returncode == 0


def test_ssh_passphrase_typed_at_the_terminal(private_bus: PrivateBus, files: Path) -> None:
    key = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    run = TtyRun.start(private_bus, "import", "ed", str(key))
    prompt = f"Passphrase of the SSH key '{key}': "
    run.answer(prompt, "wrong")
    run.answer("New passphrase for key 'ed': ", PW)
    run.answer("Confirm passphrase for key 'ed': ", PW)
    # Only the agent can tell the SSH passphrase is wrong: asked again, the agent's kept.
    run.answer(f"Wrong passphrase, try again. {prompt}", SSH_PW)
    code, out, err = run.finish()
    assert code == 0, err
    assert out.decode().strip() == public(key)
    assert SSH_PW.encode() not in run.seen and PW.encode() not in run.seen


def sk_key(files: Path) -> Path:
    from test_age_ssh import sk_private_key

    path = files / "sk"
    path.write_text(sk_private_key())
    return path


def test_bad_keys_write_nothing(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    good = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    truncated = files / "truncated"
    truncated.write_text(keygen(files, "ed2", "-t", "ed25519").read_text()[:250])
    cases = [
        (keygen(files, "ec", "-t", "ecdsa"), None, "ECDSA SSH keys cannot be used with age: "),
        (sk_key(files), None, "Security-key (FIDO, sk-*) SSH keys cannot be used with age: "),
        (good, "wrong", "The SSH key's passphrase is wrong."),
        (truncated, None, "The SSH private key is truncated or damaged."),
        (keygen(files, "small", "-t", "rsa", "-b", "1024"), None, "This RSA key has 1024 bits"),
    ]
    for key, ssh_pw, sentence in cases:
        with passphrase_fd(ssh_pw or "") as sfd, passphrase_fd(PW) as afd:
            fds = ["--ssh-passphrase-fd", str(sfd), "--passphrase-fd", str(afd)]
            r = ka(bus, "import", "k", str(key), *fds, pass_fds=(sfd, afd))
        err = r.stderr.decode()
        assert r.returncode == 1 and f"keyagent: error: {sentence}" in err, err
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1
        assert not (bus.home / "k.key").exists()
    # ecdsa and sk-* are refused before any prompt: no terminal, no fd, still the sentence.
    r = ka(bus, "import", "k", str(files / "ec"))
    assert r.returncode == 1 and b"ECDSA SSH keys cannot be used" in r.stderr
    r = ka(bus, "import", "k", f"{good}.pub")
    assert r.returncode == 1 and b"is an SSH public key: import the private key" in r.stderr
    # The bus refuses them too (a client that skips the command's checks).
    r = ka(bus, "encrypt", "-r", Path(f"{files / 'small'}.pub").read_text(), input=b"x")
    assert r.returncode == 1 and b"This RSA key has 1024 bits" in r.stderr
    assert bus.agent_pid() is not None  # the agent kept running
    assert ka(bus, "list").stdout == b""


def test_bus_methods_take_ssh_keys(private_bus: PrivateBus, files: Path) -> None:
    """ImportKey, Encrypt and Decrypt (in-message) called as any D-Bus client would."""
    from keyagent import Client
    from keyagent.protocol import BadPassphrase, Malformed, Unsupported

    rsa = keygen(files, "rsa", "-t", "rsa", "-b", "2048")
    locked = keygen(files, "locked", "-t", "ed25519", passphrase=SSH_PW)
    ec = keygen(files, "ec", "-t", "ecdsa")
    with Client(private_bus.address, timeout=30) as c:
        c.import_key("rsa", rsa.read_text(), PW)
        assert c.key("rsa").recipient == public(rsa) and c.key("rsa").type == "ssh-rsa"
        c.unlock("rsa", PW)
        enc = subprocess.run(
            ["age", "-R", f"{rsa}.pub"], input=b"in a message", capture_output=True, check=True
        ).stdout
        assert c.decrypt(enc) == (b"in a message", "rsa")
        ct = c.encrypt([Path(f"{rsa}.pub").read_text().strip()], b"back")
        assert age_d(rsa, ct) == b"back"
        with pytest.raises(BadPassphrase, match="protected by a passphrase"):
            c.import_key("locked", locked.read_text(), PW)
        with pytest.raises(Unsupported, match="ECDSA"):
            c.import_key("ec", ec.read_text(), PW)
        with pytest.raises(Malformed):
            c.encrypt(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"], b"x")
        names = [k.name for k in c.keys()]  # noqa: SIM118 - a method, not a dict
        assert names == ["rsa"]


def test_the_tag_names_the_one_locked_key(private_bus: PrivateBus, files: Path) -> None:
    """SSH stanzas carry their key's tag: a locked-key answer names only the key that fits."""
    from keyagent import Client
    from keyagent.protocol import Locked, NoMatch

    a, b = keygen(files, "a", "-t", "ed25519"), keygen(files, "b", "-t", "ed25519")
    import_ssh(private_bus, "a", a)
    import_ssh(private_bus, "b", b)
    enc = subprocess.run(
        ["age", "-R", f"{b}.pub"], input=b"for b", capture_output=True, check=True
    ).stdout
    with Client(private_bus.address, timeout=30) as c:
        with pytest.raises(Locked) as e:
            c.decrypt(enc)
        assert e.value.names == ("b",)
        with pytest.raises(NoMatch):
            c.decrypt(enc, key="a")
        c.unlock("a", PW)
        with pytest.raises(Locked):  # an unlocked other key is not tried either
            c.decrypt(enc)
        c.unlock("b", PW)
        assert c.decrypt(enc) == (b"for b", "b")


def test_import_key_opens_protected_keys(private_bus: PrivateBus, files: Path) -> None:
    """ImportKey takes a protected key file's text and its passphrase: through a pipe
    (ssh-passphrase-fd, what keyagent.Client sends) or in the message (ssh-passphrase, from
    busctl). Missing or wrong: BadPassphrase, and no key written."""
    from keyagent import Client
    from keyagent.protocol import BadPassphrase, InvalidArgs

    ed = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    pem = keygen(files, "pem", "-t", "rsa", "-b", "2048", "-m", "PEM", passphrase=SSH_PW)
    assert "Proc-Type: 4,ENCRYPTED" in pem.read_text()
    with Client(private_bus.address, timeout=30) as c:
        with pytest.raises(BadPassphrase, match=r"^The SSH key is protected by a passphrase"):
            c.import_key("ed", ed.read_text(), PW)
        with pytest.raises(BadPassphrase, match=r"^The SSH key's passphrase is wrong\.$"):
            c.import_key("ed", ed.read_text(), PW, ssh_passphrase="wrong")
        assert c.keys() == []
        for name, key in (("ed", ed), ("pem", pem)):
            c.import_key(name, key.read_text(), PW, ssh_passphrase=SSH_PW)
            assert c.key(name).recipient == public(key)
        r, w = os.pipe()
        os.close(w)
        try:
            opts = {"ssh-passphrase": ("s", SSH_PW), "ssh-passphrase-fd": ("h", r)}
            with pytest.raises(InvalidArgs, match="not both"):
                c._manager("ImportKey", "sssa{sv}", ("both", ed.read_text(), PW, opts))
        finally:
            os.close(r)
    call = ["busctl", "--user", "call", "--", "org.example.KeyAgent", "/org/example/KeyAgent"]
    call += ["org.example.KeyAgent", "ImportKey", "sssa{sv}", "busctl", ed.read_text(), PW]
    r = private_bus.run([*call, "1", "ssh-passphrase", "s", "wrong"], check=False)
    assert r.returncode != 0 and "The SSH key's passphrase is wrong." in r.stderr
    private_bus.run([*call, "1", "ssh-passphrase", "s", SSH_PW])
    assert ka(private_bus, "recipient", "busctl").stdout.decode().strip() == public(ed)
    enc = subprocess.run(
        ["age", "-R", f"{pem}.pub"], input=b"pem", capture_output=True, check=True
    ).stdout
    assert ka_pw(private_bus, [PW], "unlock", "pem").returncode == 0
    assert ka(private_bus, "decrypt", input=enc).stdout == b"pem"
    assert private_bus.agent_pid() is not None


def test_import_and_recipients_file_load_no_agent_code(
    private_bus: PrivateBus, files: Path
) -> None:
    """`keyagent import` of a protected key and `encrypt -R` of SSH lines, all the way through
    the agent: the command loads neither keyagentd nor cryptography (-X importtime)."""
    bus = private_bus
    env = {**bus.env, "PYTHONPROFILEIMPORTTIME": "1"}
    key = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    ec = keygen(files, "ec", "-t", "ecdsa")
    authorized = files / "authorized_keys"
    authorized.write_text(f"no-pty {Path(f'{key}.pub').read_text()}{Path(f'{ec}.pub').read_text()}")

    def loaded(r: subprocess.CompletedProcess[bytes]) -> set[str]:
        assert r.returncode == 0, r.stderr.decode()
        lines = r.stderr.decode().splitlines()
        return {ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")}

    with passphrase_fd(SSH_PW, PW) as fd:
        args = ["--ssh-passphrase-fd", str(fd), "--passphrase-fd", str(fd)]
        r = ka(bus, "import", "ed", str(key), *args, pass_fds=(fd,), env=env)
    imported = loaded(r)
    assert {"keyagent.sshimport", "keyagent.sshtext", "keyagent.transport"} <= imported
    r = ka(bus, "encrypt", "-R", str(authorized), "-o", str(files / "out.age"), env=env)
    imported |= loaded(r)
    assert b"line 2: ECDSA SSH keys cannot be used" in r.stderr
    heavy = [m for m in imported if m.split(".")[0] in ("keyagentd", "cryptography", "bcrypt")]
    heavy += [m for m in imported if m.split(".")[0] == "jeepney"]  # the client's own D-Bus code
    assert heavy == []
    assert age_d(clear_copy(key, SSH_PW), (files / "out.age").read_bytes()) == b""


@pytest.mark.skipif(not have("dbus-monitor"), reason="installed by scripts/sysdeps.sh")
def test_import_sends_no_ssh_secret_on_the_bus(private_bus: PrivateBus, files: Path) -> None:
    """`keyagent import` of a protected key: a bus capture holds neither the OpenSSH
    passphrase nor the key, encrypted or not (it goes through `identity-fd`; the agent alone
    decrypts it)."""
    from test_plugin_monitor import Capture

    key = keygen(files, "ed", "-t", "ed25519", passphrase=SSH_PW)
    # base64 of "openssh-key-v1\0" then the cipher "none": an unencrypted OpenSSH key's start.
    clear_start = b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"
    assert clear_start in clear_copy(key, SSH_PW).read_bytes()
    capture = Capture(private_bus, files / "capture")
    assert import_ssh(private_bus, "ed", key, SSH_PW) == public(key)
    seen = capture.stop()
    assert b"ImportKey" in seen and b"-----BEGIN OPENSSH PRIVATE KEY-----" not in seen
    assert SSH_PW.encode() not in seen and clear_start not in seen
