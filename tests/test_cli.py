"""The `keyagent` command, run as a subprocess against the real agent (no terminal here:
passphrases come from --passphrase-fd; terminal prompting is in test_cli_tty.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pyrage
import pytest

from cli_support import FAST_AGENT_ARGS, KEYAGENT, PASSPHRASE, create_key, error_line, ka, ka_pw
from cli_support import files as files
from cli_support import private_bus as private_bus
from conftest import ROOT, BusFactory, PrivateBus


def test_init_list_status_recipient(private_bus: PrivateBus) -> None:
    bus = private_bus
    r1 = create_key(bus, "work", PASSPHRASE, "--label", "laptop key")
    r2 = create_key(bus, "pq", PASSPHRASE, "--type", "mlkem768x25519")
    assert r1.startswith("age1") and r2.startswith("age1pq1")
    out = ka(bus, "recipient", "work", "pq")
    assert out.returncode == 0 and out.stdout.decode().split() == [r1, r2]

    r = ka_pw(bus, [PASSPHRASE], "init", "work")
    assert r.returncode == 1
    assert error_line(r).startswith("keyagent: error: ")
    assert b"keyagent: hint: choose another name" in r.stderr

    lines = ka(bus, "list").stdout.decode().splitlines()
    assert [ln.split()[:3] for ln in lines] == [
        ["pq", "mlkem768x25519", "locked"],
        ["work", "x25519", "locked"],
    ]
    assert lines[1].endswith("laptop key")

    r = ka_pw(bus, [PASSPHRASE], "unlock", "work", "--idle-timeout", "5m", "--max-timeout", "1h")
    assert r.returncode == 0, r.stderr
    doc = json.loads(ka(bus, "status", "--json").stdout)
    assert doc["version"] == 1
    assert doc["agent"]["pid"] == bus.agent_pid() and doc["agent"]["version"]
    keys = {k["name"]: k for k in doc["keys"]}
    assert keys["pq"]["locked"] is True and keys["pq"]["seconds_left"] is None
    work = keys["work"]
    assert work["locked"] is False and work["label"] == "laptop key" and work["recipient"] == r1
    assert work["idle_timeout"] == 300 and work["max_timeout"] == 3600
    assert 0 < work["seconds_left"] <= 3600 and work["unlocked_until"] > 0
    text = ka(bus, "status").stdout.decode()
    assert "key work: unlocked (" in text and "key pq: locked" in text and r1 in text
    assert r2 not in text and f"age1pq1…{r2[-12:]} (whole: keyagent recipient pq)" in text
    assert "unlocked (" in ka(bus, "list").stdout.decode()

    assert ka(bus, "lock", "work").returncode == 0
    assert all(k["locked"] for k in json.loads(ka(bus, "status", "--json").stdout)["keys"])
    for args in (["lock", "--all"], ["lock"]):
        assert ka_pw(bus, [PASSPHRASE], "unlock", "pq").returncode == 0
        assert ka(bus, *args).returncode == 0
        assert json.loads(ka(bus, "status", "--json").stdout)["keys"][0]["locked"] is True

    r = ka(bus, "recipient", "nope")
    assert r.returncode == 1 and b"nope" in r.stderr and b"keyagent list" in r.stderr


def test_unlock_errors(private_bus: PrivateBus) -> None:
    bus = private_bus
    create_key(bus, "k")
    r = ka_pw(bus, ["wrong"], "unlock", "k")
    assert r.returncode == 1
    assert error_line(r) == "keyagent: error: The passphrase is wrong."
    r = ka(bus, "unlock", "k")  # no terminal: the agent's askpass, but it has none
    assert r.returncode == 2
    assert error_line(r) == (
        "keyagent: error: Key 'k' is locked and there is no askpass program to ask for its "
        "passphrase: run 'keyagent unlock k' on a terminal, or set $KEYAGENT_ASKPASS or "
        "askpass in config.toml."
    )
    assert b"--passphrase-fd" in r.stderr
    r = ka(bus, "unlock", "--no-askpass", "k")
    assert r.returncode == 2
    assert error_line(r) == (
        "keyagent: error: A passphrase is needed, but there is no terminal to ask on."
    )
    r = ka_pw(bus, [], "unlock", "k")
    assert r.returncode == 1 and b"No more passphrases" in r.stderr
    r = ka_pw(bus, [PASSPHRASE], "unlock", "missing")
    assert r.returncode == 1 and b"missing" in r.stderr


def test_unlock_several_keys_with_an_ssh_add_lifetime(private_bus: PrivateBus) -> None:
    """`keyagent unlock a b -t 1h30m`: one passphrase line per key, in order; -t is the key's
    maximum lifetime, typed as for ssh-add; a wrong passphrase stops at that key."""
    bus = private_bus
    create_key(bus, "a", "pa")
    create_key(bus, "b", "pb")
    create_key(bus, "c", "pc")
    r = ka_pw(bus, ["pa", "pb"], "unlock", "a", "b", "-t", "1h30m")
    assert r.returncode == 0, r.stderr
    keys = {k["name"]: k for k in json.loads(ka(bus, "status", "--json").stdout)["keys"]}
    assert keys["a"]["max_timeout"] == keys["b"]["max_timeout"] == 5400
    assert not keys["a"]["locked"] and not keys["b"]["locked"] and keys["c"]["locked"]
    assert ka(bus, "lock", "--all").returncode == 0

    r = ka_pw(bus, ["pa", "pa"], "unlock", "a", "c", "b")  # the second line is wrong
    assert r.returncode == 1
    assert error_line(r) == "keyagent: error: Key 'c': The passphrase is wrong."
    assert b"unlocked before it: 'a'" in r.stderr
    keys = {k["name"]: k for k in json.loads(ka(bus, "status", "--json").stdout)["keys"]}
    assert [n for n, k in sorted(keys.items()) if not k["locked"]] == ["a"]

    assert ka(bus, "lock", "--all").returncode == 0
    r = ka_pw(bus, ["pa", "pb"], "unlock", "a", "missing", "b")  # every name checked first
    assert r.returncode == 1 and b"missing" in r.stderr
    assert all(k["locked"] for k in json.loads(ka(bus, "status", "--json").stdout)["keys"])
    r = ka_pw(bus, ["pa"], "unlock", "a", "-t", "1x")
    assert r.returncode == 2 and b"invalid duration '1x'" in r.stderr


def test_encrypt_decrypt_files_and_armor(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    recipient = create_key(bus, "k")
    data = os.urandom(200_000)
    src = files / "plain"
    src.write_bytes(data)
    enc, arm, out = files / "enc.age", files / "enc.asc", files / "out"
    assert ka(bus, "encrypt", "-k", "k", "-o", str(enc), str(src)).returncode == 0
    assert stat.S_IMODE(enc.stat().st_mode) == 0o666 & ~_umask()
    r = ka(bus, "encrypt", "-a", "-r", recipient, str(src))
    assert r.returncode == 0 and r.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    arm.write_bytes(r.stdout)

    r = ka(bus, "decrypt", "-o", str(out), str(enc))  # the key is locked, no terminal
    assert r.returncode == 1  # the agent would ask at the desktop, but has no askpass program
    assert error_line(r) == (
        "keyagent: error: Key 'k' is locked and there is no askpass program to ask for its "
        "passphrase: run 'keyagent unlock k' on a terminal, or set $KEYAGENT_ASKPASS or "
        "askpass in config.toml."
    )
    assert not out.exists()
    r = ka(bus, "decrypt", "--no-askpass", "-o", str(out), str(enc))
    assert r.returncode == 1
    assert error_line(r) == "keyagent: error: Key 'k' is locked: unlock it and retry."
    assert b"keyagent: hint: run 'keyagent unlock k'" in r.stderr
    assert not out.exists()
    r = ka(bus, "decrypt", "--askpass", "--no-askpass", str(enc))
    assert r.returncode == 2 and b"not both" in r.stderr

    assert ka_pw(bus, [PASSPHRASE], "unlock", "k").returncode == 0
    assert ka(bus, "decrypt", "-o", str(out), str(enc)).returncode == 0
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    r = ka(bus, "decrypt", "-k", "k", str(arm))  # armored input detected
    assert r.returncode == 0 and r.stdout == data
    r = ka(bus, "decrypt", "-", input=enc.read_bytes())
    assert r.returncode == 0 and r.stdout == data
    assert sorted(os.listdir(files)) == ["enc.age", "enc.asc", "out", "plain"]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_pipeline_of_several_mib(private_bus: PrivateBus) -> None:
    bus = private_bus
    create_key(bus, "k")
    assert ka_pw(bus, [PASSPHRASE], "unlock", "k").returncode == 0
    data = os.urandom(6 * 2**20 + 123)
    enc = ka(bus, "encrypt", "-k", "k", input=data)
    assert enc.returncode == 0 and len(enc.stdout) > len(data)
    dec = ka(bus, "decrypt", input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data
    # A real shell pipeline: encrypt | decrypt, stdout of one is the stdin of the other.
    p1 = subprocess.Popen(
        ["sh", "-c", 'head -c 5000000 /dev/zero | "$0" -m keyagent encrypt -k k', _python()],
        env=bus.env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    r = ka(bus, "decrypt", stdin=p1.stdout)  # type: ignore[arg-type]
    assert p1.wait(timeout=60) == 0
    assert r.returncode == 0 and r.stdout == bytes(5_000_000)


def _python() -> str:
    import sys

    return sys.executable


@pytest.mark.parametrize("damage", ["tamper", "truncate", "garbage"])
def test_damaged_input_leaves_no_output(private_bus: PrivateBus, files: Path, damage: str) -> None:
    bus = private_bus
    create_key(bus, "k")
    assert ka_pw(bus, [PASSPHRASE], "unlock", "k").returncode == 0
    data = os.urandom(300_000)
    enc = ka(bus, "encrypt", "-k", "k", input=data).stdout
    if damage == "tamper":
        bad = bytearray(enc)
        bad[-1000] ^= 1
        blob, message = bytes(bad), "integrity"
    elif damage == "truncate":
        blob, message = enc[: len(enc) - 70_000], "integrity"
    else:
        blob, message = b"this is not an age file at all\n" * 10, "age"
    src = files / "in.age"
    src.write_bytes(blob)
    fresh, existing = files / "fresh", files / "existing"
    existing.write_bytes(b"precious")
    for target in (fresh, existing):
        r = ka(bus, "decrypt", "-o", str(target), str(src))
        assert r.returncode == 1
        line = error_line(r)
        assert message in line.lower(), line
        assert b"Traceback" not in r.stderr
    assert not fresh.exists()
    assert existing.read_bytes() == b"precious"
    assert sorted(os.listdir(files)) == ["existing", "in.age"]


def test_passphrase_files(bus_factory: BusFactory, files: Path) -> None:
    # A cheap scrypt work factor for the agent's own files keeps this test fast.
    bus = bus_factory(agent_args=FAST_AGENT_ARGS)
    out = files / "p.age"
    r = ka_pw(bus, ["file secret"], "encrypt", "-p", "-o", str(out), input=b"hello")
    assert r.returncode == 0, r.stderr
    assert pyrage.passphrase.decrypt(out.read_bytes(), "file secret") == b"hello"
    r = ka_pw(bus, ["file secret"], "decrypt", str(out))
    assert r.returncode == 0 and r.stdout == b"hello"
    r = ka_pw(bus, ["wrong"], "decrypt", "-o", str(files / "x"), str(out))
    assert r.returncode == 1 and error_line(r).startswith("keyagent: error: The passphrase")
    assert not (files / "x").exists()
    r = ka(bus, "decrypt", str(out))
    assert r.returncode == 1
    assert error_line(r) == "keyagent: error: This file is encrypted with a passphrase."
    r = ka_pw(bus, ["file secret"], "decrypt", input=out.read_bytes())  # a pipe, replayed
    assert r.returncode == 0 and r.stdout == b"hello"
    # A passphrase file made by the reference age (a C2SP vector: pyrage's would cost seconds).
    vector = (ROOT / "tests/vectors/age/scrypt").read_bytes()
    head, _, body = vector.partition(b"\n\n")
    (files / "o.age").write_bytes(body)
    r = ka_pw(bus, ["password"], "decrypt", str(files / "o.age"))
    assert r.returncode == 0, r.stderr
    assert f"payload: {hashlib.sha256(r.stdout).hexdigest()}".encode() in head


def test_decrypt_unlocks_with_passphrase_fd(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    create_key(bus, "k")
    enc = files / "f.age"
    assert ka(bus, "encrypt", "-k", "k", "-o", str(enc), input=b"payload").returncode == 0
    r = ka_pw(bus, ["wrong"], "decrypt", str(enc))
    assert r.returncode == 1 and b"The passphrase is wrong." in r.stderr
    r = ka_pw(bus, [PASSPHRASE], "decrypt", str(enc))
    assert r.returncode == 0 and r.stdout == b"payload"
    assert json.loads(ka(bus, "status", "--json").stdout)["keys"][0]["locked"] is False


def test_decrypt_from_a_pipe_unlocks_and_replays(private_bus: PrivateBus) -> None:
    """The Locked answer comes after the agent read the header from the pipe: the command
    replays what it kept of the pipe after unlocking."""
    bus = private_bus
    create_key(bus, "k")
    data = os.urandom(6 * 2**20 + 1)
    enc = ka(bus, "encrypt", "-k", "k", input=data).stdout
    r = ka_pw(bus, [PASSPHRASE], "decrypt", input=enc)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    assert ka(bus, "lock").returncode == 0
    bad = bytearray(enc)
    bad[len(bad) // 2] ^= 1
    r = ka_pw(bus, [PASSPHRASE], "decrypt", input=bytes(bad))
    assert r.returncode == 1 and b"integrity" in error_line(r).encode().lower()


def test_encrypt_usage_and_recipient_files(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    a = pyrage.x25519.Identity.generate()
    b = pyrage.x25519.Identity.generate()
    rfile = files / "recipients.txt"
    rfile.write_text(f"# team\n{a.to_public()}\n\n{b.to_public()}\n")
    r = ka(bus, "encrypt", "-R", str(rfile), input=b"for both")
    assert r.returncode == 0
    assert pyrage.decrypt(r.stdout, [a]) == b"for both" == pyrage.decrypt(r.stdout, [b])
    r = ka(bus, "encrypt", "-r", str(a.to_public()), "-r", "age1garbage", input=b"x")
    assert r.returncode == 1 and not r.stdout
    assert error_line(r).startswith("keyagent: error: Recipient 'age1garbage' is not usable: ")
    long_bad = "age1pq1" + "b" * 1952  # as long as a hybrid recipient, not one
    r = ka(bus, "encrypt", "-r", long_bad, input=b"x")
    assert r.returncode == 1 and f"Recipient '{long_bad[:39]}…' " in error_line(r)
    r = ka(bus, "encrypt", "-r", str(a.to_public()), str(files / "missing"))
    assert r.returncode == 1
    assert (
        error_line(r)
        == f"keyagent: error: Cannot open '{files}/missing': No such file or directory."
    )
    r = ka(bus, "encrypt", "-k", "nokey", input=b"x")
    assert r.returncode == 1 and b"nokey" in r.stderr


def test_import_export_passwd_delete(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    keygen = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    ident_file = files / "id.txt"
    ident_file.write_text(keygen.stdout)  # with age-keygen's comment lines
    identity = next(ln for ln in keygen.stdout.splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    public = str(pyrage.x25519.Identity.from_str(identity).to_public())
    r = ka_pw(bus, ["imp pw"], "import", "imp", str(ident_file), "--label", "from age")
    assert r.returncode == 0 and r.stdout.decode().strip() == public
    r = ka_pw(bus, ["imp2 pw"], "import", "imp2", input=keygen.stdout.encode())
    assert r.returncode == 0 and r.stdout.decode().strip() == public
    r = ka_pw(bus, ["x"], "import", "bad", input=b"# nothing here\n")
    assert r.returncode == 1 and b"holds no age identity" in r.stderr

    out = files / "export.age"
    r = ka_pw(bus, ["imp pw"], "export", "imp", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert pyrage.passphrase.decrypt(out.read_bytes(), "imp pw").decode().strip() == identity
    r = ka_pw(bus, ["imp pw"], "export", "imp", "-a")
    assert r.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert b"BEGIN" not in r.stdout[10:]  # armored once, and it opens
    assert pyrage.passphrase.decrypt(r.stdout, "imp pw").decode().strip() == identity
    assert out.read_bytes().startswith(b"age-encryption.org/v1\n")  # -o without -a: binary
    r = ka_pw(bus, ["wrong"], "export", "imp", "-o", str(files / "e2"))
    assert r.returncode == 1 and not (files / "e2").exists()

    r = ka_pw(bus, ["imp pw", "changed pw"], "passwd", "imp")
    assert r.returncode == 0, r.stderr
    assert ka_pw(bus, ["imp pw"], "unlock", "imp").returncode == 1
    assert ka_pw(bus, ["changed pw"], "unlock", "imp").returncode == 0
    r = ka_pw(bus, ["wrong", "x"], "passwd", "imp2")
    assert r.returncode == 1 and b"wrong" in r.stderr

    r = ka(bus, "delete", "imp")
    assert r.returncode == 2 and b"--yes" in r.stderr
    assert ka(bus, "delete", "imp", "--yes").returncode == 0  # unlocked: no passphrase needed
    r = ka_pw(bus, ["wrong"], "delete", "imp2", "--yes")
    assert r.returncode == 1
    assert ka_pw(bus, ["imp2 pw"], "delete", "imp2", "-y").returncode == 0
    assert ka(bus, "list").stdout == b""


def test_install_and_uninstall(private_bus: PrivateBus, files: Path) -> None:
    bus = private_bus
    r = ka(bus, "install", "--bindir", str(files / "bin"))
    assert r.returncode == 0, r.stderr
    written = [Path(line.split(" ", 1)[1]) for line in r.stdout.decode().splitlines()]
    assert len(written) == 2 and all(p.exists() for p in written)
    assert any(str(files / "bin") in p.read_text() for p in written)
    r = ka(bus, "uninstall")
    assert r.returncode == 0
    assert [Path(line.split(" ", 1)[1]) for line in r.stdout.decode().splitlines()] == written
    assert not any(p.exists() for p in written)
    r = ka(bus, "uninstall")
    assert r.returncode == 0 and b"nothing to remove" in r.stderr


def test_debug_does_not_change_normal_errors(private_bus: PrivateBus) -> None:
    r = ka(private_bus, "--debug", "recipient", "nope")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    r = ka(private_bus, "recipient", "nope", "--debug")
    assert r.returncode == 1 and b"Traceback" not in r.stderr


def test_hybrid_key_and_pinning(private_bus: PrivateBus) -> None:
    bus = private_bus
    pq = create_key(bus, "pq", PASSPHRASE, "--type", "mlkem768x25519")
    create_key(bus, "classic")
    for name in ("pq", "classic"):
        assert ka_pw(bus, [PASSPHRASE], "unlock", name).returncode == 0
    data = os.urandom(100_000)
    enc = ka(bus, "encrypt", "-r", pq, input=data)
    assert enc.returncode == 0, enc.stderr
    dec = ka(bus, "decrypt", input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data
    r = ka(bus, "decrypt", "-k", "classic", input=enc.stdout)  # pinned to the wrong key
    assert r.returncode == 1 and error_line(r)
    r = ka(bus, "encrypt", "-k", "pq", "-k", "classic", input=data)  # age refuses this mix
    assert r.returncode == 1 and error_line(r)


def test_lock_all_does_not_start_the_agent(private_bus: PrivateBus) -> None:
    assert ka(private_bus, "lock").returncode == 0
    assert private_bus.agent_pid() is None
    assert ka(private_bus, "lock", "--all").returncode == 0
    assert private_bus.agent_pid() is None
    assert ka(private_bus, "list").returncode == 0  # this one does
    assert private_bus.agent_pid() is not None


def _open_output_size(pid: int, directory: Path) -> int | None:
    """The size of the file the command `pid` has open in `directory` (None: none yet)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
            if target.startswith(f"{directory}/"):  # also "DIR/#123 (deleted)" (O_TMPFILE)
                return (fd_dir / fd).stat().st_size
        except OSError:
            continue
    return None


def test_kill_9_mid_stream_leaves_only_the_old_output(private_bus: PrivateBus, files: Path) -> None:
    """`kill -9` while the agent writes -o OUT: no temporary file stays, OUT is untouched."""
    bus = private_bus
    create_key(bus, "k")
    assert ka_pw(bus, [PASSPHRASE], "unlock", "k").returncode == 0
    enc = ka(bus, "encrypt", "-k", "k", input=os.urandom(2 * 2**20)).stdout
    out = files / "out"
    out.write_bytes(b"precious")
    for _ in range(3):
        p = subprocess.Popen(
            [*KEYAGENT, "decrypt", "-o", str(out)],
            env=bus.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert p.stdin is not None
        try:
            p.stdin.write(enc[: len(enc) // 2])  # half the file; the pipe stays open
            p.stdin.flush()
            deadline = time.monotonic() + 30
            while not _open_output_size(p.pid, files) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _open_output_size(p.pid, files), "the agent wrote no output"
            assert p.poll() is None  # mid-stream: still waiting for the rest of the input
            p.kill()
            assert p.wait(timeout=10) == -9
        finally:
            p.stdin.close()  # the agent sees a cut-short input and gives up
            if p.poll() is None:
                p.kill()
                p.wait()
        assert os.listdir(files) == ["out"]
        assert out.read_bytes() == b"precious"
    r = ka(bus, "decrypt", "-o", str(out), input=enc)  # and the command still works
    assert r.returncode == 0, r.stderr
    assert os.listdir(files) == ["out"] and stat.S_IMODE(out.stat().st_mode) == 0o600


#: What jeepney (the command's former D-Bus library) brought with it: milliseconds per start.
NOT_ON_THE_HOT_PATH = ("jeepney", "typing", "enum", "socket", "selectors", "re", "dataclasses")


def test_decrypt_and_status_load_none_of_jeepneys_chain(
    private_bus: PrivateBus, files: Path
) -> None:
    """A real `decrypt` and `status` through the agent, then a look at `sys.modules`: the
    command's own D-Bus code did the work, none of jeepney's import chain was loaded."""
    recipient = create_key(private_bus, "lean")
    assert ka_pw(private_bus, [PASSPHRASE], "unlock", "lean").returncode == 0
    src = files / "in.age"
    src.write_bytes(pyrage.encrypt(b"lean", [pyrage.x25519.Recipient.from_str(recipient)]))
    probe = (
        "import sys; from keyagent.cli import main; code = main(sys.argv[1:]);"
        f" bad = [m for m in sys.modules if m.split('.')[0] in {NOT_ON_THE_HOT_PATH!r}];"
        " sys.stderr.write(f'LOADED {bad} {\"keyagent.transport\" in sys.modules}\\n');"
        " sys.exit(code)"
    )

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [KEYAGENT[0], "-c", probe, *args], env=private_bus.env, capture_output=True, check=False
        )

    out = files / "out"
    r = run("decrypt", "-o", str(out), str(src))
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_bytes() == b"lean"
    assert b"LOADED [] True" in r.stderr
    r = run("status")
    assert r.returncode == 0 and b"key lean: unlocked" in r.stdout, r.stderr.decode()
    assert b"LOADED [] True" in r.stderr
