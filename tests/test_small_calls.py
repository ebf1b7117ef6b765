"""The small Decrypt/Encrypt fast paths (issue 15, round three): each gives what the general
path gives. Options skipped when there are none, the header split at once when the file is
in memory, chunks decrypted straight into the reply's buffer."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator

import pyrage
import pytest

from agent_support import FAST_ARGS, CallError, Client, module_bus_with_key
from conftest import PrivateBus
from keyagentd import age
from keyagentd.age.batches import IntoRun
from keyagentd.age.stream import CHUNK
from keyagentd.secrets import PlainBuffer

IDENT = age.X25519Identity(bytes(range(32)))


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus_with_key(tmp_path_factory.mktemp("small"), "k", agent_args=FAST_ARGS) as b:
        yield b


def test_options_are_still_read_when_given(bus: PrivateBus) -> None:
    """No options: the defaults, unparsed; any option given is still checked and honoured."""
    with Client(bus.address) as c:
        ct = c.encrypt(["k"], b"plain")
        assert not ct.startswith(b"-----BEGIN")
        armored = c.encrypt(["k"], b"plain", armor=("b", True))
        assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
        assert c.decrypt(ct) == (b"plain", "k")
        assert c.decrypt(armored, key=("s", "k")) == (b"plain", "k")
        with pytest.raises(CallError) as e:
            c.decrypt(ct, key=("s", "other"))
        assert e.value.short == "NoSuchKey"
        with pytest.raises(CallError) as e:
            c.decrypt(ct, typo=("b", True))
        assert e.value.short == "InvalidArgs"
        with pytest.raises(CallError) as e:
            c.encrypt(["k"], b"x", armour=("b", True))
        assert e.value.short == "InvalidArgs"


def _both(data: bytes) -> tuple[str, str]:
    """What parsing ``data`` in memory and as a stream say (the error text, or "ok")."""
    said = []
    for src in (data, io.BytesIO(data)):
        try:
            dec = age.Decryptor(src)
            dec.unwrap([IDENT])
            out = io.BytesIO()
            dec.decrypt_to(out)
            said.append("ok " + out.getvalue().decode())
        except (age.ParseError, age.UnsupportedError, age.HeaderMacError, age.NoMatchError) as exc:
            said.append(f"{type(exc).__name__}: {exc}")
    return said[0], said[1]


def test_a_header_split_at_once_reads_as_a_stream_does() -> None:
    good = age.encrypt_bytes([IDENT.recipient()], b"hello", armor=False)
    head, _, payload = good.partition(b"\n---")
    lines = head.split(b"\n")  # intro, stanza, body
    footer = b"---" + payload.split(b"\n", 1)[0] + b"\n"
    cases = {
        "good": good,
        "footer where a body line goes": b"\n".join(lines[:2]) + b"\n" + footer + b"x",
        "no footer line": head + b"\n",
        "footer line without its LF": head + b"\n" + footer[:-1],
        "a bad MAC": good.replace(footer, b"--- " + b"A" * 43 + b"\n"),
        "a stanza changed": good.replace(lines[1], lines[1][:-1] + b"B"),
        "an empty line for a stanza": b"\n".join(lines[:1]) + b"\n\n" + footer,
        "a second age version": b"age-encryption.org/v2\n-> X25519 abc\n\n--- x\n",
    }
    seen = set()
    for name, data in cases.items():
        whole, streamed = _both(data)
        assert whole == streamed, name
        seen.add(whole.split(":")[0])
    assert _both(good)[0] == "ok hello"
    assert {"ParseError", "HeaderMacError"} <= seen  # the cases do reach the checks


def test_chunks_go_straight_into_the_plain_buffer() -> None:
    """Decrypt's output (`IntoRun`): the chunks decrypted in place in the reply's buffer;
    a damaged chunk fails as with the default runner; the buffer never takes more than
    its size."""
    plain = os.urandom(2 * CHUNK + 100)
    data = age.encrypt_bytes([IDENT.recipient()], plain, armor=False)

    def into_buffer(ciphertext: bytes, size: int) -> tuple[int, PlainBuffer]:
        out = PlainBuffer(size)
        dec = age.Decryptor(ciphertext)
        dec.unwrap([IDENT])
        n = dec.decrypt_to(out, output=functools.partial(IntoRun, into=out.view(size)))  # type: ignore[arg-type]
        return n, out

    n, out = into_buffer(data, len(data))
    assert n == len(plain) and bytes(out.view(n)) == plain
    damaged = bytearray(data)
    damaged[-5] ^= 1
    with pytest.raises(age.PayloadError):
        into_buffer(bytes(damaged), len(damaged))
    with pytest.raises(ValueError, match="full"):
        into_buffer(data, len(plain) - 1)


def test_a_big_decrypt_over_the_bus(bus: PrivateBus) -> None:
    """Several chunks through the agent's Decrypt, and pyrage's files too."""
    with Client(bus.address) as c:
        recipient = c.create("big")
        c.unlock("big")
        plain = os.urandom(3 * CHUNK + 7)
        ct = pyrage.encrypt(plain, [pyrage.x25519.Recipient.from_str(recipient)])
        assert c.decrypt(ct) == (plain, "big")
        bad = bytearray(ct)
        bad[-1] ^= 1
        with pytest.raises(CallError):
            c.decrypt(bytes(bad))
