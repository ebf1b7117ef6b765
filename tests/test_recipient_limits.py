"""Encrypt accepts only what Decrypt reads back (issue 13): at most 1,024 stanzas and a
1 MiB header. Go's age reads 1,100 recipients, this agent 1,024: Encrypt used to accept
1,100 and write files its own Decrypt refused."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyrage
import pytest

from agent_support import FAST_ARGS, CallError, Client, module_bus_with_key
from conftest import PrivateBus
from keyagentd import age
from keyagentd.age.format import MAX_STANZAS


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus_with_key(tmp_path_factory.mktemp("limits"), "k", agent_args=FAST_ARGS) as b:
        yield b


def _others(n: int) -> list[str]:
    return [str(pyrage.x25519.Identity.generate().to_public()) for _ in range(n)]


def test_the_most_recipients_encrypt_and_decrypt_back(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        others = _others(MAX_STANZAS - 1)
        ct = c.encrypt([*others, "k"], b"many")
        assert c.decrypt(ct) == (b"many", "k")
        with pytest.raises(CallError) as e:
            c.encrypt([*others, *_others(1), "k"], b"one too many")
        assert e.value.short == "TooLarge" and "1024" in e.value.text


def test_a_header_too_big_to_read_is_refused() -> None:
    recipient = age.generate_identity("mlkem768x25519").recipient()
    for count in (700, MAX_STANZAS):  # ~1.5 KiB per hybrid stanza: > 1 MiB
        with pytest.raises(age.TooLargeError):  # the agent answers TooLarge (errors.py)
            age.encrypt([recipient] * count, io.BytesIO(b"x"), io.BytesIO())
    out = io.BytesIO()
    age.encrypt([recipient] * 600, io.BytesIO(b"x"), out)  # fits, and reads back
    assert len(age.Decryptor(io.BytesIO(out.getvalue())).stanzas) == 600
