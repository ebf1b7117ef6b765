"""The `keyagent` command's own parts: argument handling, durations, status output, atomic output,
progress, passphrase sources and prompting, and the failures that need no working agent
(no bus, broken activation, a foreign owner of the bus name)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import os
import stat
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_support import KEYAGENT, error_line, ka, passphrase_fd
from conftest import OTHER_UID, PrivateBus, as_other_user, requires_root
from keyagent import args as argparse_cli
from keyagent import cli, fastargs, grammar
from keyagent.client import KeyInfo
from keyagent.commands import armor, parse_identity_file
from keyagent.context import CommandError
from keyagent.durations import format_duration, parse_duration
from keyagent.output import AtomicOutput, OutputError, Progress
from keyagent.prompt import (
    NoPassphraseSource,
    PassphraseFdError,
    PassphraseMismatch,
    Passphrases,
    read_tty,
)
from keyagent.protocol import AccessDenied
from keyagent.status import (
    list_text,
    short_recipient,
    status_document,
    status_json,
    status_text,
)

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "init", "list", "status", "unlock", "lock", "recipient", "identity", "encrypt", "decrypt",
    "import", "export", "passwd", "delete", "install", "uninstall",
]  # fmt: skip


# -- arguments -------------------------------------------------------------------------------


def test_version_and_help_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == "keyagent 0.1.0"
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for command in COMMANDS:
        assert f"    {command}" in out
    assert "130  interrupted" in out and "4    access denied" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: keyagent {command}")
    assert "exit status:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid choice"),
        ([], "required"),
        (["unlock", "k", "--idle-timeout", "5x"], "invalid duration '5x'"),
        (["unlock", "k", "--max-timeout", "0"], "invalid duration '0'"),
        (["init", "k", "--type", "rsa"], "invalid choice"),
        (["unlock", "k", "--passphrase-fd", "-1"], "not a file descriptor"),
        (["encrypt", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("keyagent: error: ") and message in err
    assert "keyagent: hint: see 'keyagent" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["unlock", "bad name"], "Invalid key name 'bad name'"),
        (["encrypt", "-k", "x/y"], "Invalid key name"),
        (["encrypt"], "Nothing to encrypt to."),
        (["encrypt", "-p", "-r", "age1xyz"], "-p/--passphrase cannot be combined"),
        (["lock", "k", "--all"], "not both"),
        (["recipient", "a" * 65], "Invalid key name"),
        (["unlock", "k", "--askpass", "--no-askpass"], "--askpass or --no-askpass, not both"),
        (["decrypt", "--askpass", "--no-askpass"], "--askpass or --no-askpass, not both"),
        (["delete", "k", "--askpass", "--no-askpass"], "--askpass or --no-askpass, not both"),
    ],
)
def test_checked_before_the_bus_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)  # no bus is ever reached
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_binary_output_to_a_terminal_is_refused() -> None:
    master, slave = os.openpty()
    try:
        r = subprocess.run(
            [*KEYAGENT, "encrypt", "-r", "age1whatever"],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent",
                "PYTHONPATH": str(ROOT / "cli"),
            },
            start_new_session=True,
            check=False,
            timeout=30,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2
    assert b"keyagent: error: Refusing to write binary data to the terminal." in r.stderr
    assert b"use -a" in r.stderr


def test_import_time_skips_heavy_modules() -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keyagent", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "cli")},
    )
    assert r.stdout.strip() == "keyagent 0.1.0"
    modules = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "keyagent.cli" in modules
    for heavy in ("asyncio", "cryptography", "dbus_fast", "keyagentd", "typing", "argparse"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in modules), heavy


def test_decrypt_hot_path_skips_slow_modules(tmp_path: Path) -> None:
    """`keyagent decrypt -o OUT FILE` loads none of the modules that cost milliseconds at each
    start (the command's start-up goal): it gets as far as the bus, which is missing here;
    `status` likewise (no dataclasses, json or pathlib)."""
    src = tmp_path / "in.age"
    src.write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    env["PYTHONPATH"] = str(ROOT / "cli")

    def imported(*args: str) -> set[str]:
        r = subprocess.run(
            [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env
        )
        return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}

    baseline = imported("-c", "pass")
    loaded = imported("-m", "keyagent", "decrypt", "-o", str(tmp_path / "out"), str(src))
    assert {"keyagent.client", "keyagent.crypt", "keyagent.output", "keyagent.transport"} <= loaded
    slow = ["dataclasses", "inspect", "pathlib", "tempfile", "shutil", "threading", "traceback"]
    slow += ["argparse", "gettext", "locale"]  # fastargs.parse_fast reads this command line
    # the command's own D-Bus code (keyagent.wire): none of jeepney's import chain
    slow += ["jeepney", "typing", "enum", "socket", "selectors", "re", "string"]
    assert not [m for m in slow if m in loaded - baseline]
    status = imported("-m", "keyagent", "status")
    assert {"keyagent.commands", "keyagent.status", "keyagent.transport"} <= status
    assert not [m for m in [*slow, "json"] if m in status - baseline]


def _openssh_key(cipher: bytes, key_type: bytes) -> str:
    """An OpenSSH private key file's text, its header whole (what the command reads)."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    kdf, options = (b"none", b"") if cipher == b"none" else (b"bcrypt", s(bytes(16)) + s(b""))
    blob = b"openssh-key-v1\0" + s(cipher) + s(kdf) + s(options) + (1).to_bytes(4, "big")
    blob += s(s(key_type) + s(bytes(32))) + s(bytes(64))
    body = base64.b64encode(blob).decode()
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"


def test_ssh_import_and_recipients_file_load_no_agent_code(tmp_path: Path) -> None:
    """`keyagent import` of a protected OpenSSH key and `encrypt -R` of SSH lines read the key
    text with the stdlib: neither loads keyagentd nor cryptography (the bus is missing here;
    tests/test_cli_ssh.py follows both through a real agent)."""
    key = tmp_path / "id_ed25519"
    key.write_text(_openssh_key(b"aes256-ctr", b"ssh-ed25519"))
    ec = tmp_path / "id_ecdsa"
    ec.write_text(_openssh_key(b"none", b"ecdsa-sha2-nistp256"))
    keys = tmp_path / "authorized_keys"
    blob = base64.b64encode(b"\0\0\0\x0bssh-ed25519" + bytes(36)).decode()
    keys.write_text(f'command="x y" ssh-ed25519 {blob} me@host\necdsa-sha2-nistp256 AAAA c\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    env["PYTHONPATH"] = str(ROOT / "cli")

    def run(*args: str) -> tuple[str, set[str]]:
        r = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "keyagent", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        lines = r.stderr.splitlines()
        return r.stderr, {
            ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")
        }

    err, loaded = run("import", "k", str(key), "--ssh-passphrase-fd", "0")
    assert "keyagent.sshtext" in loaded and "session bus" in err  # got as far as the bus
    err, more = run("import", "k", str(ec))
    assert "ECDSA SSH keys cannot be used with age" in err
    loaded |= more
    err, more = run("encrypt", "-R", str(keys), "-o", str(tmp_path / "out"))
    assert "line 2: ECDSA SSH keys cannot be used with age" in err and "session bus" in err
    loaded |= more
    assert [m for m in loaded if m.split(".")[0] in ("keyagentd", "cryptography", "bcrypt")] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["decrypt", "-o", "out", "in"],
        ["--debug", "decrypt", "-k", "work", "--passphrase-fd", "3"],
        ["--deb", "encrypt", "-r", "age1x", "-k", "a", "-k", "b", "-a", "-q"],
        ["unlock", "work", "--idle-timeout", "10m"],
        ["lock", "--all"],
        ["status", "--json"],
    ],
)
def test_one_command_parser_parses_like_the_whole(argv: list[str]) -> None:
    assert grammar.command_in(argv) == next(a for a in argv if not a.startswith("-"))
    assert argparse_cli.build_parser(grammar.command_in(argv)).parse_args(argv) == (
        argparse_cli.build_parser().parse_args(argv)
    )


_FAST_TOKENS = [
    *("-o", "--output", "-q", "--quiet", "--debug", "--passphrase-fd", "-k", "--key"),
    *("--askpass", "--no-askpass"),
    *("-r", "--recipient", "-R", "--recipients-file", "-p", "--passphrase", "-a", "--armor"),
    *("--json", "--all", "--idle-timeout", "-t", "--max-timeout", "--askpass", "-y", "--yes"),
    *("--type", "x25519", "mlkem768x25519", "--label", "--bindir", "10m", "1h30m", "0", "1w"),
    *("--out", "-oOUT", "--output=o", "-qa", "-h", "--help", "--", "-x", "--bogus", "-t5"),
    *("in", "out", "-", "", "-1", "3", "03", "+3", "3x", "\u0663", "age1abc", "a b", "decrypt"),
]


def _argparse_or_none(argv: list[str]) -> dict[str, object] | None:
    try:
        with contextlib.redirect_stdout(StringIO()), contextlib.redirect_stderr(StringIO()):
            return vars(argparse_cli.build_parser().parse_args(argv))
    except SystemExit:
        return None


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.just("--debug"), max_size=2),
    st.sampled_from(sorted(grammar.COMMANDS)),
    st.lists(st.sampled_from(_FAST_TOKENS), max_size=7),
)
def test_fast_args_agree_with_argparse(lead: list[str], command: str, rest: list[str]) -> None:
    """The fast reader reads a line only as argparse does; anything else it leaves to argparse."""
    argv = [*lead, command, *rest]
    fast = fastargs.parse_fast(argv)
    if fast is not None:
        assert vars(fast) == _argparse_or_none(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["decrypt", "-o", "out", "in"],
        ["--debug", "decrypt", "in", "-k", "work", "-q", "--passphrase-fd", "3"],
        ["decrypt"],
        ["encrypt", "-r", "age1x", "-k", "a", "--key", "b", "-R", "f", "-a", "-o", "o", "-"],
        ["encrypt", "-p", "--armor", "--output", "o", "--quiet", "--debug", "in"],
        ["status"],
        ["status", "--json"],
        ["list"],
        ["unlock", "work", "home", "-t", "1h30m", "--passphrase-fd", "3"],
        ["lock", "--all"],
        ["recipient", "work", "home"],
        ["init", "work", "--type", "mlkem768x25519", "--label", "laptop"],
        ["import", "work", "id.txt"],
    ],
)
def test_fast_args_read_the_usual_lines(argv: list[str]) -> None:
    fast = fastargs.parse_fast(argv)
    assert fast is not None and vars(fast) == _argparse_or_none(argv)


def test_top_level_help_lists_every_command_even_before_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert grammar.command_in(["-h", "decrypt"]) is None
    assert grammar.command_in(["--bogus", "decrypt"]) is None
    assert grammar.command_in(["nope"]) is None
    with pytest.raises(SystemExit) as e:
        cli.main(["-h", "decrypt"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


def test_owner_check_is_one_round_trip_and_handles_a_changing_owner() -> None:
    """GetNameOwner, GetConnectionUnixUser, GetNameOwner go out together; when the owner
    changed in between, the uid of the current owner is asked by its unique name."""
    from keyagent.client import Client

    class Fake(Client):
        def __init__(self, replies: list[Any]) -> None:
            self.timeout = 1.0
            self._owner = None
            self.replies = replies
            self.batches: list[list[str]] = []
            self.asked: list[str] = []

        def _exchange(self, msgs: Any, **kw: Any) -> list[Any]:
            self.batches.append([str(m[3]) for m in msgs])  # (dest, path, iface, member, ...)
            return self.replies

        def _uid_of(self, unique_name: str) -> int:
            self.asked.append(unique_name)
            return os.getuid() if unique_name == ":1.9" else OTHER_UID

    me = os.getuid()
    c = Fake([(":1.5",), (me,), (":1.5",)])
    assert c.owner() == ":1.5" and c.asked == []
    assert c.batches == [["GetNameOwner", "GetConnectionUnixUser", "GetNameOwner"]]
    c = Fake([(":1.5",), (OTHER_UID,), (":1.5",)])
    with pytest.raises(AccessDenied):
        c.owner()
    c = Fake([(":1.5",), (me,), (":1.9",)])  # changed hands: trust neither answer blindly
    assert c.owner() == ":1.9" and c.asked == [":1.9"]
    c = Fake([(":1.5",), (me,), (":1.7",)])
    with pytest.raises(AccessDenied):
        c.owner()


def test_client_import_stays_light() -> None:
    code = (
        "import sys, keyagent; keyagent.Client; import keyagent.cli, keyagent.crypt,"
        " keyagent.commands, keyagent.sshimport, keyagent.sshtext;"
        " bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('asyncio', 'cryptography', 'dbus_fast', 'keyagentd')]; print(bad)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "cli")},
    )
    assert r.stdout.strip() == "[]"


# -- durations and status --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
     (" 5M ", 300), ("1h0m5s", 3605)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "5x", "m", "1.5h", "10 m", "5 5", "99999999999"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 60, 545, 3600, 7140, 86400, 97200)] == [
        "0s", "45s", "1m", "9m 5s", "1h", "1h 59m", "1d", "1d 3h"
    ]  # fmt: skip


def _key(name: str, locked: bool, until: int = 0, label: str = "") -> KeyInfo:
    return KeyInfo(name, label, "x25519", f"age1{name}", 1700000000, locked, until, 600, 7200)


def test_status_json_document() -> None:
    now = 1_800_000_000.0
    keys = [_key("a", True), _key("b", False, int(now) + 125, "laptop")]
    doc = status_document("0.1.0", 4242, keys, now)
    assert doc["version"] == 1
    assert doc["agent"] == {"version": "0.1.0", "pid": 4242}
    a, b = doc["keys"]
    assert a["locked"] is True and a["unlocked_until"] is None and a["seconds_left"] is None
    assert b["locked"] is False and b["unlocked_until"] == int(now) + 125
    assert b["seconds_left"] == 125 and b["label"] == "laptop" and b["recipient"] == "age1b"
    assert set(a) == {
        "name", "label", "type", "recipient", "created", "locked", "unlocked_until",
        "seconds_left", "idle_timeout", "max_timeout",
    }  # fmt: skip
    assert status_json(doc).endswith("}\n")
    text = status_text(doc, keys, now)
    assert "keyagentd 0.1.0 (pid 4242)" in text and "key b: unlocked (2m 5s left)" in text


def test_status_text_shortens_long_recipients() -> None:
    now = 1_800_000_000.0
    long = "age1pq1" + "q" * 1940 + "tail12345678"
    hybrid = KeyInfo("pq", "", "mlkem768x25519", long, 1700000000, True, 0, 600, 7200)
    doc = status_document("0.1.0", 1, [hybrid, _key("a", True)], now)
    text = status_text(doc, [hybrid, _key("a", True)], now)
    assert long not in text
    assert "  recipient: age1pq1…tail12345678 (whole: keyagent recipient pq)\n" in text
    assert "  recipient: age1a\n" in text  # short ones stay whole
    assert doc["keys"][0]["recipient"] == long and long in status_json(doc)
    x25519 = "age1" + "x" * 58
    assert short_recipient(x25519) == x25519  # a real X25519 recipient is never shortened


def test_list_text_aligned() -> None:
    now = 1_800_000_000.0
    out = list_text([_key("a", True), _key("long-name", False, int(now) + 60, "x")], now)
    assert out.splitlines() == [
        "a          x25519  locked",
        "long-name  x25519  unlocked (1m left)  x",
    ]
    assert list_text([], now) == ""


# -- identity files and armor -----------------------------------------------------------------


def test_parse_identity_file() -> None:
    text = "# created: 2024\n# public key: age1xyz\n\nAGE-SECRET-KEY-1ABC\n"
    assert parse_identity_file(text, "f") == "AGE-SECRET-KEY-1ABC"
    with pytest.raises(CommandError, match="holds no age identity"):
        parse_identity_file("# nothing\n", "f")
    with pytest.raises(CommandError, match="holds 2 identities"):
        parse_identity_file("AGE-SECRET-KEY-1A\nAGE-SECRET-KEY-1B\n", "f")
    with pytest.raises(CommandError, match="line 2 is not an age identity"):
        parse_identity_file("# c\nhello\n", "f")


def test_armor_is_age_pem() -> None:
    data = bytes(range(256)) * 2
    text = armor(data).decode()
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN AGE ENCRYPTED FILE-----"
    assert lines[-1] == "-----END AGE ENCRYPTED FILE-----"
    assert all(len(line) == 64 for line in lines[1:-2]) and 0 < len(lines[-2]) <= 64
    import base64

    assert base64.b64decode("".join(lines[1:-1])) == data


# -- atomic output and progress -----------------------------------------------------------------


def test_atomic_output_commit(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with AtomicOutput(target, private=True) as out:
        out.write(b"hello")
        assert not target.exists()
        out.commit()
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_output_public_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with AtomicOutput(tmp_path / "pub", private=False) as out:
            out.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == 0o640


def test_atomic_output_failure_leaves_nothing_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), AtomicOutput(target, private=True) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_output_reset_and_errors(tmp_path: Path) -> None:
    with AtomicOutput(tmp_path / "o", private=True) as out:
        out.write(b"abc")
        out.reset()
        out.write(b"d")
        assert out.size() == 1
        out.commit()
    assert (tmp_path / "o").read_bytes() == b"d"
    with (
        pytest.raises(OutputError, match="No such file"),
        AtomicOutput(tmp_path / "missing" / "o", private=True),
    ):
        pass
    with pytest.raises(OutputError, match="is a directory"), AtomicOutput(tmp_path, private=True):
        pass


def test_atomic_output_has_no_name_until_commit(tmp_path: Path) -> None:
    """O_TMPFILE: while the data is written the directory shows nothing (kill -9 leaves none)."""
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with AtomicOutput(target, private=True) as out:
        out.write(b"new data")
        assert out.tmp is None and os.listdir(tmp_path) == ["out"]
        assert os.readlink(f"/proc/self/fd/{out.fd}").endswith("(deleted)")
        out.commit()
    assert target.read_bytes() == b"new data" and os.listdir(tmp_path) == ["out"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("errno_", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
def test_atomic_output_without_o_tmpfile_uses_a_named_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    def unsupported(self: AtomicOutput, mode: int) -> int:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(AtomicOutput, "_open_unnamed", unsupported)
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), AtomicOutput(target, private=True) as out:
        out.write(b"partial")
        assert out.tmp is not None and sorted(os.listdir(tmp_path))[0].startswith(".out.")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out"] and target.read_bytes() == b"old"
    with AtomicOutput(target, private=True) as out:
        out.write(b"new")
        out.commit()
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_output_copies_when_the_link_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(self: AtomicOutput, dfd: int) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(AtomicOutput, "_link", no_link)
    target = tmp_path / "out"
    data = os.urandom(3 * 2**20 + 5)
    old = os.umask(0o022)
    try:
        with AtomicOutput(target, private=False) as out:
            out.write(data)
            out.commit()
    finally:
        os.umask(old)
    assert target.read_bytes() == data and os.listdir(tmp_path) == ["out"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_progress_render() -> None:
    clock = iter([0.0, 2.0]).__next__
    buf = StringIO()
    bar = Progress(lambda: 50 * 2**20, 100 * 2**20, stream=buf, clock=clock)
    bar()
    line = buf.getvalue()
    assert line.startswith("\r\x1b[K[##########..........]  50%")
    assert "50.0 MiB / 100.0 MiB" in line and "25.0 MiB/s" in line and "ETA 0:02" in line
    bar.finish()
    assert buf.getvalue().endswith("\r\x1b[K")
    unknown = Progress(lambda: None, None, stream=StringIO(), clock=lambda: 0.0)
    assert unknown.render(None, 65) == "1:05"
    assert unknown.render(3 * 2**30, 3) == "3.0 GiB  1.0 GiB/s  0:03"


# -- passphrase sources --------------------------------------------------------------------------


def test_passphrase_fd_lines() -> None:
    with passphrase_fd("old one", "new\r") as fd:
        p = Passphrases(fd)
        assert p.from_fd and not p.interactive()
        assert p.get("x") == "old one"
        assert p.new("x", "y") == "new"  # CRLF tolerated
        with pytest.raises(PassphraseFdError, match="No more passphrases"):
            p.get("x")
    with passphrase_fd("") as fd, pytest.raises(PassphraseMismatch, match="must not be empty"):
        Passphrases(fd).new("x", "y")
    r, w = os.pipe()
    os.write(w, b"\xff\xfe\n")
    os.close(w)
    with pytest.raises(PassphraseFdError, match="UTF-8"):
        Passphrases(r).get("x")
    os.close(r)
    with pytest.raises(PassphraseFdError, match="Cannot read file descriptor 9999"):
        Passphrases(9999).get("x")


def test_no_terminal_no_fd(tmp_path: Path) -> None:
    p = Passphrases(None, tty_path=str(tmp_path / "no-tty"))
    assert not p.interactive()
    with pytest.raises(NoPassphraseSource):
        p.get("Passphrase: ")


def _pty_answer(master: int, answers: list[bytes], seen: list[bytes]) -> None:
    for answer in answers:
        buf = b""
        while b": " not in buf:
            buf += os.read(master, 1024)
        seen.append(buf)  # the prompt comes after echo is off and typeahead dropped
        os.write(master, answer)


def test_read_tty_no_echo_and_confirmation() -> None:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    seen: list[bytes] = []
    try:
        t = threading.Thread(target=_pty_answer, args=(master, [b"s3cret\n", b"s3cret\n"], seen))
        t.start()
        value = Passphrases(None, tty_path=name).new("New passphrase: ", "Confirm: ")
        t.join()
        assert value == "s3cret"
        assert b"New passphrase: " in seen[0] and b"Confirm: " in seen[1]
        os.set_blocking(master, False)
        rest = b""
        with contextlib.suppress(BlockingIOError):
            rest = os.read(master, 4096)
        assert b"s3cret" not in b"".join(seen) + rest  # echo was off
        answers = [b"a\n", b"b\n", b"\n", b"c\n", b"d\n"]  # mismatch, empty, mismatch
        t = threading.Thread(target=_pty_answer, args=(master, answers, []))
        os.set_blocking(master, True)
        t.start()
        with pytest.raises(PassphraseMismatch, match="do not match"):
            Passphrases(None, tty_path=name).new("New passphrase: ", "Confirm: ")
        t.join()
        t = threading.Thread(target=_pty_answer, args=(master, [b"x y\n"], []))
        t.start()
        assert read_tty("Passphrase: ", name) == "x y"
        t.join()
    finally:
        os.close(master)
        os.close(slave)


# -- failures without a working agent ------------------------------------------------------------


def test_no_session_bus_exit_3(private_bus: PrivateBus) -> None:
    env = {**private_bus.env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    r = ka(private_bus, "list", env=env)
    assert r.returncode == 3
    assert error_line(r).startswith("keyagent: error: Cannot connect to the session bus")
    env.pop("DBUS_SESSION_BUS_ADDRESS")
    r = ka(private_bus, "status", env=env)
    assert r.returncode == 3 and b"DBUS_SESSION_BUS_ADDRESS is not set" in r.stderr


def test_agent_that_fails_to_start_exit_3(private_bus: PrivateBus) -> None:
    (private_bus.bindir / "keyagentd").write_text("#!/bin/sh\nexit 1\n")
    r = ka(private_bus, "list")
    assert r.returncode == 3, r.stderr
    assert error_line(r).startswith("keyagent: error: The key agent failed to start")
    assert b"keyagent: hint: " in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        ("typo", "'idel_timeout'"),
        ("open keystore", "has mode 0755, open to other users: run 'chmod 700 "),
        ("max below idle", "max_timeout"),
    ],
)
def test_start_errors_name_their_cause(private_bus: PrivateBus, setup: str, cause: str) -> None:
    """The command prints the agent's own sentence, not just "exited with status 1"."""
    config = Path(private_bus.env["XDG_CONFIG_HOME"]) / "keyagent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    if setup == "typo":
        config.write_text("idel_timeout = 60\n")
    elif setup == "max below idle":
        config.write_text("idle_timeout = 600\nmax_timeout = 60\n")
    else:
        home = Path(private_bus.env["KEYAGENT_HOME"])
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o755)
    r = ka(private_bus, "list")
    assert r.returncode == 3, r.stderr
    line = error_line(r)
    assert line.startswith("keyagent: error: The key agent failed to start: "), line
    assert cause in line and "exited with status" not in line, line
    assert b"keyagent install" not in r.stderr and b"Traceback" not in r.stderr
    assert b"keyagent: hint: fix that and run the command again" in r.stderr
    # Fixed: the agent starts, and the note it had left goes away.
    config.unlink(missing_ok=True)
    if setup == "open keystore":
        Path(private_bus.env["KEYAGENT_HOME"]).chmod(0o700)
    assert ka(private_bus, "list").returncode == 0
    assert not (Path(private_bus.env["XDG_RUNTIME_DIR"]) / "keyagent" / "start-error").exists()


def test_a_stale_start_note_is_not_reported(private_bus: PrivateBus) -> None:
    note = Path(private_bus.env["XDG_RUNTIME_DIR"]) / "keyagent" / "start-error"
    note.parent.mkdir(mode=0o700, exist_ok=True)
    note.write_text("an old failure\n")
    os.utime(note, (0, 0))
    (private_bus.bindir / "keyagentd").write_text("#!/bin/sh\nexit 1\n")
    r = ka(private_bus, "list")
    assert r.returncode == 3 and b"an old failure" not in r.stderr
    assert b"keyagent install" in r.stderr  # nothing better to say than before


def test_agent_not_installed_exit_3(private_bus: PrivateBus) -> None:
    for f in private_bus.service_dir.iterdir():
        f.unlink()
    r = ka(private_bus, "status", "--json")
    assert r.returncode == 3, r.stderr
    assert error_line(r).startswith("keyagent: error: The key agent is not installed")
    assert b"keyagent install" in r.stderr


FAKE_OWNER = r"""
import sys
from jeepney import HeaderFields, MessageType
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
conn = open_dbus_connection(bus="SESSION", enable_fds=True)
reply = conn.send_and_get_reply(message_bus.RequestName("org.example.KeyAgent", 4))
print("owner", reply.body[0], flush=True)
while True:
    msg = conn.receive()
    if msg.header.message_type == MessageType.method_call:
        print("CALL", msg.header.fields.get(HeaderFields.member), flush=True)
"""


@requires_root
def test_refuses_an_agent_of_another_uid(
    permissive_bus: PrivateBus, other_user_pythonpath: str
) -> None:
    """A process of uid 65534 owns the name: the client must not send it anything."""
    # The venv's interpreter may live where uid 65534 cannot go: it runs the system one.
    fake = subprocess.Popen(
        ["/usr/bin/python3", "-c", FAKE_OWNER],
        env={**permissive_bus.env, "PYTHONPATH": other_user_pythonpath},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=as_other_user,
        cwd="/",
    )
    permissive_bus.extra_pids.append(fake.pid)
    try:
        assert fake.stdout is not None
        assert fake.stdout.readline().strip() == "owner 1"  # primary owner
        with passphrase_fd("secret") as fd:
            r = ka(permissive_bus, "unlock", "work", "--passphrase-fd", str(fd), pass_fds=(fd,))
        assert r.returncode == 4, r.stderr
        assert error_line(r) == (
            f"keyagent: error: The service org.example.KeyAgent on this bus runs as uid"
            f" {OTHER_UID}, not as you."
        )
        r = ka(permissive_bus, "encrypt", "-r", "age1x", input=b"data")
        assert r.returncode == 4
        assert ka(permissive_bus, "list").returncode == 4
    finally:
        fake.kill()
        out, _ = fake.communicate(timeout=10)
    assert "CALL" not in out  # not one message reached the impostor


# -- completions and man page stay in step with the parser ---------------------------------------


def _options_by_command() -> dict[str, set[str]]:
    parser = argparse_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()
    }


@pytest.mark.parametrize(
    "path",
    [
        "data/completions/keyagent.bash",
        "data/completions/_keyagent",
        "data/completions/keyagent.fish",
        "data/keyagent.1",
    ],
)
def test_completions_and_man_page_know_every_command_and_option(path: str) -> None:
    text = (ROOT / path).read_text()
    if path.endswith(".1"):
        text = text.replace("\\-", "-")
    fish = path.endswith(".fish")
    for command, options in _options_by_command().items():
        assert command in text, command
        for opt in options - {"--help", "-h"}:
            if opt.startswith("--"):
                assert (opt[2:] if fish else opt) in text, (command, opt)
            else:  # a short option: as fish spells it, or as a word of its own
                assert (f"-s {opt[1:]}" if fish else f"{opt} ") in text.replace(",", " "), (
                    command,
                    opt,
                )


def test_bash_completion_completes_commands_and_options() -> None:
    script = f"""
source {ROOT}/data/completions/keyagent.bash
COMP_WORDS=(keyagent enc); COMP_CWORD=1; _keyagent; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(keyagent unlock --idle); COMP_CWORD=2; _keyagent; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(keyagent init x --type m); COMP_CWORD=4; _keyagent; echo "${{COMPREPLY[*]}}"
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == ["encrypt", "--idle-timeout", "mlkem768x25519"]


def test_a_crash_prints_one_line_and_debug_shows_the_trace(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyagent import commands

    def boom(ctx: object) -> int:
        raise ZeroDivisionError("internal detail")

    monkeypatch.setattr(commands, "cmd_list", boom)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "keyagent: error: Internal error (ZeroDivisionError).",
        f"keyagent: hint: this is a bug: please report it to {cli.REPORT_TO},"
        " with the output of --debug",
    ]
    assert cli.main(["--debug", "list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal detail" in err
    assert cli.main(["list", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


# -- replaying a pipe ----------------------------------------------------------------------------


def _write_and_close(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.close(fd)


def _drain(fd: int, limit: int | None = None) -> bytes:
    out = b""
    while limit is None or len(out) < limit:
        chunk = os.read(fd, 65536 if limit is None else min(65536, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def test_replayable_input_replays_what_was_read() -> None:
    from keyagent.replay import ReplayableInput

    data = os.urandom(300_000)
    src_r, src_w = os.pipe()
    writer = threading.Thread(target=_write_and_close, args=(src_w, data))
    writer.start()
    replay = ReplayableInput(src_r, keep=1_000_000)
    first = replay.start()
    head = _drain(first, 1000)  # a reader that gives up early, like the agent after a header
    os.close(first)
    replay.finish()
    assert replay.can_replay()
    second = replay.start()
    again = _drain(second)
    os.close(second)
    replay.finish()
    writer.join()
    os.close(src_r)
    assert head == data[:1000] and again == data


def test_replayable_input_gives_up_past_its_limit() -> None:
    from keyagent.replay import ReplayableInput

    src_r, src_w = os.pipe()
    writer = threading.Thread(target=_write_and_close, args=(src_w, bytes(200_000)))
    writer.start()
    replay = ReplayableInput(src_r, keep=50_000)
    first = replay.start()
    assert len(_drain(first)) == 200_000
    os.close(first)
    replay.finish()
    writer.join()
    os.close(src_r)
    assert not replay.can_replay()
