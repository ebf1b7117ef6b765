"""Big DecryptFd/EncryptFd streams through the agent, where its parallel run ciphers 1 MiB
batches on several threads: files and pipes give the same bytes, and an input that is
damaged, cut or grown while it is read gives a named error, never a crash, never a byte
that did not authenticate."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import DBusAddress, HeaderFields, new_method_call

from agent_support import (
    FAST_ARGS,
    MANAGER,
    MI,
    CallError,
    Client,
    fd_count,
    feed,
    module_bus_with_key,
    settle_fds,
    unread,
    wait_until,
)
from cli_support import error_line, ka
from conftest import PrivateBus, requires_root
from keyagent import protocol
from keyagentd.age.stream import CHUNK, CHUNK_CT
from test_hardening_memory import find_in_memory

MIB = 1 << 20
PLAIN = os.urandom(24 * MIB + 1234)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus_with_key(tmp_path_factory.mktemp("limits"), "s", agent_args=FAST_ARGS) as b:
        yield b


@pytest.fixture(scope="module")
def sealed(bus: PrivateBus, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """PLAIN encrypted by the agent, file to file."""
    d = tmp_path_factory.mktemp("sealed")
    (d / "plain").write_bytes(PLAIN)
    with Client(bus.address) as c:
        _files(c, "EncryptFd", d / "plain", d / "ct", ["s"])
    return (d / "ct").read_bytes()


def _files(c: Client, member: str, src: Path, dst: Path, *args: object) -> tuple[object, ...]:
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if member == "EncryptFd":
            return c.m(member, "ashha{sv}", *args, fi, fo, {}, timeout=120)
        return c.m(member, "hha{sv}", fi, fo, {}, timeout=120)
    finally:
        os.close(fi)
        os.close(fo)


def _payload_offset(ct: bytes) -> int:
    return ct.index(b"\n", ct.index(b"\n---") + 1) + 1 + 16


def _read_exactly(fd: int, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        piece = os.read(fd, n - len(got))
        assert piece, "the output ended early"
        got += piece
    return bytes(got)


def _read_all(fd: int) -> bytes:
    got = bytearray()
    while piece := os.read(fd, MIB):
        got += piece
    return bytes(got)


def test_files_and_pipes_give_the_same_bytes(
    bus: PrivateBus, sealed: bytes, tmp_path: Path
) -> None:
    src, out = tmp_path / "ct", tmp_path / "out"
    src.write_bytes(sealed)
    with Client(bus.address) as c:
        assert _files(c, "DecryptFd", src, out) == ("s", len(PLAIN))
        assert out.read_bytes() == PLAIN
        # Pipes both ways: the same bytes.
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        feeder = feed(in_w, sealed)
        _send(c, "DecryptFd", "hha{sv}", in_r, out_w, {})
        os.close(in_r)
        os.close(out_w)
        plain = _read_all(out_r)
        os.close(out_r)
        feeder.join(60)
        assert _reply(c) == ("s", len(PLAIN)) and plain == PLAIN
        # Encrypting from a pipe: decrypts (file to file) to the same bytes.
        in_r, in_w = os.pipe()
        feeder = feed(in_w, PLAIN)
        fo = os.open(src, os.O_WRONLY | os.O_TRUNC)
        try:
            c.m("EncryptFd", "ashha{sv}", ["s"], in_r, fo, {}, timeout=120)
        finally:
            os.close(in_r)
            os.close(fo)
            feeder.join(60)
        assert _files(c, "DecryptFd", src, out) == ("s", len(PLAIN))
        assert out.read_bytes() == PLAIN


def _send(c: Client, member: str, signature: str, *args: object) -> None:
    """Send a call without waiting for its reply (the fds go with the message)."""
    addr = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
    c.conn.send(new_method_call(addr, member, signature, args))


def _reply(c: Client) -> tuple[object, ...]:
    """The reply to the call `_send` sent (signals skipped); an error raises CallError."""
    while True:
        msg = c.conn.receive(timeout=120)
        kind = msg.header.message_type.name
        if kind == "method_return":
            return tuple(msg.body)
        if kind == "error":
            name = str(msg.header.fields[HeaderFields.error_name])
            raise CallError(name, str(msg.body[0]) if msg.body else "")


@pytest.mark.parametrize("change", ["cut", "grown"])
def test_input_changed_while_read_is_a_named_error(
    bus: PrivateBus, sealed: bytes, tmp_path: Path, change: str
) -> None:
    """The output is a pipe we read slowly, so the agent is at most a few MiB ahead of us
    when the file changes under it (its batches and the pipe's buffer): it meets the change."""
    src = tmp_path / "ct"
    src.write_bytes(sealed)
    pid = bus.agent_pid()
    with Client(bus.address) as c:
        fi = os.open(src, os.O_RDONLY)
        out_r, out_w = os.pipe()
        _send(c, "DecryptFd", "hha{sv}", fi, out_w, {})
        os.close(fi)
        os.close(out_w)
        try:
            head = _read_exactly(out_r, MIB)
            if change == "cut":
                os.truncate(src, len(sealed) // 2)
            else:
                with open(src, "ab") as f:
                    f.write(b"more data after the end")
            got = head + _read_all(out_r)
        finally:
            os.close(out_r)
        with pytest.raises(CallError) as e:
            _reply(c)
    assert e.value.short == "Integrity"
    assert got == PLAIN[: len(got)], "only authenticated plaintext, in order"
    if change == "cut":
        assert len(got) % CHUNK == 0 and len(got) < len(sealed) // 2
    else:  # the short final chunk grew: it no longer authenticates
        assert got == PLAIN[: len(PLAIN) // CHUNK * CHUNK]
    with Client(bus.address) as c:
        assert c.prop(MANAGER, MI, "Version") == "0.1.0"
    assert bus.agent_pid() == pid


@pytest.mark.parametrize("bad", [1, 17, 100, 200, 383])
def test_tampered_chunk_in_the_middle(
    bus: PrivateBus, sealed: bytes, tmp_path: Path, bad: int
) -> None:
    """Later batches may be deciphered already on another thread: not a byte of them is
    written; the command leaves no output at all."""
    damaged = bytearray(sealed)
    damaged[_payload_offset(sealed) + bad * CHUNK_CT + 9] ^= 0x40
    src, out = tmp_path / "bad.age", tmp_path / "out"
    src.write_bytes(damaged)
    with Client(bus.address) as c, pytest.raises(CallError) as e:
        _files(c, "DecryptFd", src, out)
    assert e.value.short == "Integrity"
    assert out.read_bytes() == PLAIN[: bad * CHUNK]
    target = tmp_path / "by-command"
    r = ka(bus, "decrypt", "-o", str(target), str(src))
    assert r.returncode == 1 and "integrity" in error_line(r).lower()
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.age", "out"]


@requires_root
@pytest.mark.parametrize("member", ["DecryptFd", "EncryptFd"])
def test_no_plaintext_stays_in_the_agent(
    bus: PrivateBus, sealed: bytes, tmp_path: Path, member: str
) -> None:
    """Every worker wipes its buffers before it ends (the plaintext is in the output or input
    batches): once the call returned, no piece of the plaintext is left in the agent."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.write_bytes(sealed if member == "DecryptFd" else PLAIN)
    with Client(bus.address) as c:
        if member == "DecryptFd":
            _files(c, member, src, out)
        else:
            _files(c, member, src, out, ["s"])
    spots = [0, 5 * MIB + 3, 12 * MIB + 77, len(PLAIN) - 40]
    needles = {f"at {i}": PLAIN[i : i + 32] for i in spots}
    assert find_in_memory(bus.agent_pid() or 0, needles) == []


def test_a_stream_stuck_on_a_full_pipe_ends_when_its_caller_leaves(
    bus: PrivateBus, sealed: bytes, tmp_path: Path
) -> None:
    """Nobody reads the output pipe any more: the stream's writes must still look at the
    cancel flag. We take the first chunk, so a write finds the pipe empty: a blocking write
    of a whole 1 MiB batch would then wait for a reader forever."""
    src = tmp_path / "ct"
    src.write_bytes(sealed)
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
    pid = bus.agent_pid() or 0
    base = fd_count(pid)
    leaving = Client(bus.address)
    fi = os.open(src, os.O_RDONLY)
    out_r, out_w = os.pipe()
    try:
        _send(leaving, "DecryptFd", "hha{sv}", fi, out_w, {})
        os.close(out_w)
        assert _read_exactly(out_r, CHUNK) == PLAIN[:CHUNK]
        assert wait_until(lambda: unread(out_r) >= CHUNK, 30, 0.002), "no second write"
        assert fd_count(pid) >= base + 2
        leaving.close()
        assert settle_fds(pid, base) <= base  # cancelled, though the pipe stays full
    finally:
        os.close(fi)
        os.close(out_r)
