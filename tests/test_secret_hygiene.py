"""No plaintext key material stays in memory between operations (issue 8).

A child process unlocks a key into a ``KeyCache``, encrypts to it and decrypts with it a few
times through ``cache.use()``, drops its references, collects garbage, and then streams all
of its own readable memory (``/proc/self/maps`` + ``/proc/self/mem``) to this process, which
searches it for the seed, the secrets derived from it (X25519 scalar, ML-KEM seed halves) and
the ``AGE-SECRET-KEY`` strings. The key stays unlocked (sealed) during the scan: that is the
agent's state between operations.

The expected values exist only here: the child gets the seed through a pipe, read straight
into a ``bytearray`` that the cache wipes, so any copy found was made by the code under test.
A random marker the child keeps on purpose checks that the scan sees its memory at all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyagentd.age import bech32, hybrid, x25519

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import gc, os, re, sys
from keyagentd.age import decrypt_bytes, encrypt_bytes
from keyagentd.cache import KeyCache
from keyagentd.secrets import wipe

key_type, fd = sys.argv[1], int(sys.argv[2])
seed, marker = bytearray(32), bytearray(16)
assert os.readv(fd, [seed, marker]) == 48  # straight into the buffers: no bytes copy
os.close(fd)
cache = KeyCache()
cache.unlock("k", key_type, seed)
wipe(seed)  # the cache wiped it already; belt and braces
with cache.use("k") as ident:
    recipient = ident.recipient()
plain = b"attack at dawn\n" * 100
sealed = encrypt_bytes([recipient], plain)
for _ in range(4):
    with cache.use("k") as ident:
        assert decrypt_bytes([ident], sealed) == plain
del ident, recipient, sealed
gc.collect()

# Stream every readable mapping to stdout through one reused buffer (no copies of its own).
regions = []
with open("/proc/self/maps") as maps:
    for line in maps:
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
        if m:
            regions.append((int(m.group(1), 16), int(m.group(2), 16)))
buf = bytearray(1 << 20)
view = memoryview(buf)
with open("/proc/self/mem", "rb", buffering=0) as mem:
    for start, end in regions:
        pos = start
        while pos < end:
            size = min(len(buf), end - pos)
            try:
                mem.seek(pos)
                n = mem.readinto(view[:size])
            except OSError:
                break  # e.g. [vvar]: mapped readable, yet not readable through mem
            if not n:
                break
            done = 0
            while done < n:
                done += os.write(1, view[done:n])
            pos += n
assert cache.is_unlocked("k") and marker  # both alive through the scan
"""


def needles(key_type: str, seed: bytes) -> dict[str, bytes]:
    def clamp(k: bytes) -> bytes:
        return bytes([k[0] & 248]) + k[1:31] + bytes([(k[31] & 127) | 64])

    if key_type == "x25519":
        text = bech32.encode(x25519.IDENTITY_HRP, seed)
        found = {"seed (= X25519 scalar)": seed, "clamped scalar": clamp(seed)}
    else:
        text = bech32.encode(hybrid.IDENTITY_HRP, seed)
        expanded = hashlib.shake_256(seed).digest(96)
        found = {
            "seed": seed,
            "ML-KEM seed d": expanded[:32],
            "ML-KEM seed z": expanded[32:64],
            "X25519 scalar": expanded[64:],
            "clamped scalar": clamp(expanded[64:]),
        }
    found["AGE-SECRET-KEY"] = text.upper().encode()
    found["age-secret-key (lower case)"] = text.encode()
    return found


def scan_child(key_type: str, seed: bytes, marker: bytes) -> list[str]:
    """Names of the needles (and "marker") found in the child's memory after its operations."""
    wanted = {**needles(key_type, seed), "marker": marker}
    overlap = max(len(n) for n in wanted.values()) - 1
    r, w = os.pipe()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'service'}{os.pathsep}{ROOT / 'cli'}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, key_type, str(r)],
        pass_fds=(r,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    os.close(r)
    os.write(w, seed + marker)
    os.close(w)
    assert child.stdout is not None
    found: set[str] = set()
    tail = b""
    total = 0
    while chunk := child.stdout.read(1 << 22):
        total += len(chunk)
        window = tail + chunk
        found.update(name for name, needle in wanted.items() if needle in window)
        tail = window[-overlap:]
    _, err = child.communicate()
    assert child.returncode == 0, err.decode(errors="replace")
    assert total > 1 << 20, "the child's memory was not streamed"
    return sorted(found)


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_no_key_material_left_in_memory_after_use(key_type: str) -> None:
    if not Path("/proc/self/mem").exists():
        pytest.fail("this test needs Linux /proc")
    seed, marker = os.urandom(32), os.urandom(16)
    found = scan_child(key_type, seed, marker)
    assert "marker" in found, "the scan must see memory the child holds (positive control)"
    found.remove("marker")
    assert found == [], f"key material left in memory: {found}"


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_identity_wipe(key_type: str) -> None:
    from keyagentd.age import decrypt_bytes, encrypt_bytes, identity_from_seed

    seed = os.urandom(32)
    ident = identity_from_seed(key_type, bytearray(seed))
    sealed = encrypt_bytes([ident.recipient()], b"hello")
    assert decrypt_bytes([ident], sealed) == b"hello"
    buffer = ident.seed
    assert buffer == seed
    ident.wipe()
    ident.wipe()  # idempotent
    assert buffer == bytes(32)
    assert ident.recipient().encode().startswith("age1")  # public: still available
    for use in (lambda: decrypt_bytes([ident], sealed), ident.encode, lambda: ident.seed):
        with pytest.raises(ValueError):
            use()
    # Dropping an identity wipes it too.
    other = identity_from_seed(key_type, seed)
    buffer = other.seed
    del other
    assert buffer == bytes(32)


def test_scrub_bytes() -> None:
    from keyagentd.secrets import scrub_bytes

    data = hashlib.sha256(os.urandom(8)).digest()  # a fresh object only we hold
    scrub_bytes(data)
    assert data == bytes(32)
    one = bytes([7])  # a shared singleton: left alone
    scrub_bytes(one)
    assert one == b"\x07"


def test_plaintext_is_copied_without_a_temporary() -> None:
    """`PlainBuffer` and `put` copy straight into the agent's buffer: a bytearray slice
    assignment first copies the source into a temporary bytearray, freed unwiped (issue 13;
    the ~300-byte plaintext found in a pymalloc arena after lock)."""
    import tracemalloc

    from keyagentd.secrets import PlainBuffer, put

    size = 30_000
    plain = memoryview(bytearray(os.urandom(size)))
    out, target = PlainBuffer(size), bytearray(size + 8)
    tracemalloc.start()
    try:
        for copy in (lambda: out.write(plain), lambda: put(target, 4, plain)):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            copy()
            extra = tracemalloc.get_traced_memory()[1] - before
            assert extra < size // 10, f"a temporary of {extra} bytes"
    finally:
        tracemalloc.stop()
    assert out.view() == plain and target[4 : 4 + size] == plain
